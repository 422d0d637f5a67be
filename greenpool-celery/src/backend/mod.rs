//! Result backends: states, result metas, and their storage in Redis or
//! (rpc://) as replies over AMQP.

mod meta;
mod redis;
#[cfg(feature = "amqp")]
pub(crate) mod rpc;
mod state;

pub(crate) use self::redis::RedisBackend;

pub use meta::{result_key, ResultMeta};
pub use state::TaskState;
