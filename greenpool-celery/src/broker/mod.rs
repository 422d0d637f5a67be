//! Brokers. Only kombu's Redis transport for now.

mod delivery;
pub(crate) mod keys;
mod redis;

pub(crate) use self::delivery::{Delivery, Fetched, Oversized};
pub(crate) use self::redis::RedisBroker;
