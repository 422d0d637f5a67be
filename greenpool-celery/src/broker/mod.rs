//! Brokers. Only kombu's Redis transport for now.

pub(crate) mod keys;
mod redis;

pub(crate) use self::redis::{Delivery, RedisBroker};
