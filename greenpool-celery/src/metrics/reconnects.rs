//! Connections restored after a loss, by link (`broker`, `result
//! backend`, `remote control`, the last including the mailbox's pub/sub),
//! counted by the connection layer where it logs `restored after`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The `link` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LinkLabel {
    link: String,
}

/// The reconnect counters.
#[derive(Debug)]
pub(crate) struct Reconnects {
    family: Family<LinkLabel, Counter>,
}

impl Reconnects {
    /// The family, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let family = Family::<LinkLabel, Counter>::default();
        registry.register(
            "broker_reconnects",
            "Broker connections restored after a loss, by link",
            family.clone(),
        );
        Reconnects { family }
    }

    /// The counter of link `link`, shown at 0 from now on.
    pub(crate) fn counter(&self, link: &str) -> Counter {
        self.family.get_or_create_owned(&LinkLabel {
            link: link.to_owned(),
        })
    }
}
