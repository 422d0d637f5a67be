//! Brokers: kombu's Redis transport and (with the `amqp` feature) AMQP
//! 0-9-1, chosen by the URL's scheme.

#[cfg(feature = "amqp")]
pub(crate) mod amqp;
mod delivery;
pub(crate) mod keys;
mod queues;
pub(crate) mod redis;

pub(crate) use self::delivery::{Delivery, Fetched, Oversized};
pub(crate) use self::queues::{ActiveQueues, ConsumedQueue};
pub(crate) use self::redis::bind;

use crate::error::BrokerError;

/// Which transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `redis://`, `rediss://`, `unix://`.
    Redis,
    /// `amqp://`, `amqps://`, `pyamqp://`.
    #[cfg(feature = "amqp")]
    Amqp,
}

impl Transport {
    /// The transport of `url`.
    pub(crate) fn of(url: &str) -> Result<Self, BrokerError> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        match scheme.to_ascii_lowercase().as_str() {
            "redis" | "rediss" | "unix" | "redis+unix" => Ok(Transport::Redis),
            #[cfg(feature = "amqp")]
            "amqp" | "amqps" | "pyamqp" => Ok(Transport::Amqp),
            _ => Err(BrokerError::Scheme(format!("{scheme}://..."))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_transport() {
        assert_eq!(Transport::of("redis://h:1/0").unwrap(), Transport::Redis);
        assert_eq!(Transport::of("rediss://h:1/0").unwrap(), Transport::Redis);
        #[cfg(feature = "amqp")]
        for u in ["amqp://g:g@h:1//", "amqps://h", "pyamqp://h//", "AMQP://h"] {
            assert_eq!(Transport::of(u).unwrap(), Transport::Amqp, "{u}");
        }
        let e = Transport::of("sqs://secret@queue").unwrap_err().to_string();
        assert!(e.contains("amqp://") && !e.contains("secret"), "{e}");
    }
}
