//! Storing results in Redis the way Celery's Redis backend does: the meta
//! JSON at `celery-task-meta-<id>` with SETEX, PUBLISHed on the same key,
//! never overwriting a SUCCESS (one script call per batch of results,
//! ahead of the acks).

use std::sync::Arc;

use super::meta::{result_key, ResultMeta};
use crate::broker::redis::batch::Batcher;

/// The worker's result backend.
#[derive(Debug, Clone)]
pub(crate) struct RedisBackend {
    batcher: Arc<Batcher>,
}

impl RedisBackend {
    /// A backend writing through the worker's batcher, which stores
    /// results before the acks that follow them (see [`crate::broker::redis::batch`]).
    pub(crate) fn with_batcher(batcher: Arc<Batcher>) -> Self {
        RedisBackend { batcher }
    }

    /// Queues `payload` for storing at `key` as a result is stored (with
    /// the results' expiry, and PUBLISHed).
    pub(crate) fn store_raw(&self, key: String, payload: String) {
        self.batcher.store(key, payload);
    }

    /// Queues a finished chord part for its chord's join (see
    /// [`crate::canvas::chord`]).
    pub(crate) fn join(&self, part: crate::canvas::chord::ChordPart, origin: Option<String>) {
        self.batcher.join(part, origin);
    }

    /// Queues `meta` for storing.
    pub(crate) fn store(&self, meta: &ResultMeta) {
        match serde_json::to_string(meta) {
            Ok(payload) => self.batcher.store(result_key(&meta.task_id), payload),
            Err(e) => tracing::error!("cannot encode the result of {}: {e}", meta.task_id),
        }
    }
}
