//! Result backends: states, result metas, and their storage in Redis
//! (with the `redis` feature) or (rpc://, with the `amqp` feature) as
//! replies over AMQP.

mod meta;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "amqp")]
pub(crate) mod rpc;
mod state;

#[cfg(feature = "redis")]
pub(crate) use self::redis::RedisBackend;

pub use meta::{result_key, ResultMeta};
pub use state::TaskState;
