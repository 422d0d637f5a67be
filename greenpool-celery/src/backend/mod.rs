//! The Redis result backend: states, result metas and their storage.

mod meta;
mod redis;
mod state;

pub(crate) use self::redis::RedisBackend;

pub use meta::{result_key, ResultMeta};
pub use state::TaskState;
