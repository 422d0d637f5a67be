//! Brokers: kombu's Redis transport (with the `redis` feature) and AMQP
//! 0-9-1 (with the `amqp` feature), chosen by the URL's scheme. The worker
//! drives either through the narrow trait of [`transport`]; this module
//! never imports the worker.

#[cfg(feature = "amqp")]
pub(crate) mod amqp;
mod delivery;
#[cfg(feature = "redis")]
pub(crate) mod keys;
pub(crate) mod publish;
mod queues;
mod received;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "redis", feature = "amqp"))]
pub(crate) mod transport;

#[cfg(feature = "redis")]
pub(crate) use self::delivery::Fetched;
pub(crate) use self::delivery::{Delivery, Oversized};
pub(crate) use self::publish::Publish;
pub(crate) use self::queues::{ActiveQueues, ConsumedQueue};
pub(crate) use self::received::Received;
#[cfg(feature = "redis")]
pub(crate) use self::redis::bind;

use crate::error::BrokerError;

/// Which transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `redis://`, `rediss://`, `unix://`.
    #[cfg(feature = "redis")]
    Redis,
    /// `amqp://`, `amqps://`, `pyamqp://`.
    #[cfg(feature = "amqp")]
    Amqp,
}

impl Transport {
    /// The transport of `url`; [`BrokerError::NotCompiled`] for a
    /// transport this build leaves out.
    pub(crate) fn of(url: &str) -> Result<Self, BrokerError> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        match scheme.to_ascii_lowercase().as_str() {
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "unix" | "redis+unix" | "sentinel" => Ok(Transport::Redis),
            #[cfg(not(feature = "redis"))]
            "redis" | "rediss" | "unix" | "redis+unix" | "sentinel" => {
                Err(BrokerError::NotCompiled {
                    scheme: scheme.to_owned(),
                    feature: "redis",
                })
            }
            #[cfg(feature = "amqp")]
            "amqp" | "amqps" | "pyamqp" => Ok(Transport::Amqp),
            #[cfg(not(feature = "amqp"))]
            "amqp" | "amqps" | "pyamqp" => Err(BrokerError::NotCompiled {
                scheme: scheme.to_owned(),
                feature: "amqp",
            }),
            _ => Err(BrokerError::Scheme(format!("{scheme}://..."))),
        }
    }
}

/// The error for a result backend URL that names no backend this build
/// has: without the `redis` feature only rpc:// (and the AMQP broker's own
/// URL) remain, and the callers take those first.
#[cfg(all(feature = "amqp", not(feature = "redis")))]
pub(crate) fn backend_left_out(url: &str) -> BrokerError {
    match Transport::of(url) {
        Err(e) => e,
        Ok(_) => BrokerError::Scheme(format!(
            "{}://... (as a result backend)",
            url.split_once("://").map_or("", |(s, _)| s)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_transport() {
        #[cfg(feature = "redis")]
        for u in ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/r.sock"] {
            assert_eq!(Transport::of(u).unwrap(), Transport::Redis, "{u}");
        }
        #[cfg(feature = "amqp")]
        for u in ["amqp://g:g@h:1//", "amqps://h", "pyamqp://h//", "AMQP://h"] {
            assert_eq!(Transport::of(u).unwrap(), Transport::Amqp, "{u}");
        }
        let e = Transport::of("sqs://secret@queue").unwrap_err().to_string();
        assert!(e.contains("amqp://") && !e.contains("secret"), "{e}");
    }

    #[cfg(not(all(feature = "redis", feature = "amqp")))]
    #[test]
    fn transports_left_out_say_which_feature_brings_them() {
        let mut left_out = Vec::new();
        #[cfg(not(feature = "redis"))]
        left_out.extend([
            ("rediss://:secret@h:1/0", "redis"),
            ("unix:///r.sock", "redis"),
        ]);
        #[cfg(not(feature = "amqp"))]
        left_out.extend([("amqp://g:secret@h//", "amqp"), ("pyamqp://h//", "amqp")]);
        for (url, feature) in left_out {
            let e = Transport::of(url).unwrap_err();
            assert!(
                matches!(&e, BrokerError::NotCompiled { feature: f, .. } if *f == feature),
                "{url}: {e:?}"
            );
            let text = e.to_string();
            assert!(text.contains(feature) && !text.contains("secret"), "{text}");
        }
    }
}
