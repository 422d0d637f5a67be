//! Storing results in Redis the way Celery's Redis backend does: the meta
//! JSON at `celery-task-meta-<id>` with SETEX, PUBLISHed on the same key,
//! never overwriting a SUCCESS (one script call per batch of results).

use std::sync::Arc;
use std::time::Duration;

use super::meta::{result_key, ResultMeta};
use crate::batch::Batcher;
use crate::error::BrokerError;
use crate::scripts::Scripts;
use crate::stats::RedisStats;

/// The worker's result backend.
#[derive(Debug, Clone)]
pub(crate) struct RedisBackend {
    batcher: Arc<Batcher>,
}

impl RedisBackend {
    /// Connects to `url`; results expire after `expires` (never if `None`
    /// or zero).
    pub(crate) async fn connect(
        url: &str,
        expires: Option<Duration>,
        stats: Arc<RedisStats>,
    ) -> Result<Self, BrokerError> {
        let (_, mut conn) = crate::connect::connect(url).await?;
        let scripts = Scripts::load(&mut conn).await.map_err(BrokerError::Redis)?;
        Ok(Self::with_batcher(Arc::new(Batcher::spawn(
            conn,
            scripts,
            expires.map_or(0, |d| d.as_secs()),
            stats,
        ))))
    }

    /// A backend that shares a batcher with the broker's acks (same Redis
    /// server and database), so acks and results share round trips.
    pub(crate) fn with_batcher(batcher: Arc<Batcher>) -> Self {
        RedisBackend { batcher }
    }

    /// Queues `meta` for storing.
    pub(crate) fn store(&self, meta: &ResultMeta) {
        match serde_json::to_string(meta) {
            Ok(payload) => self.batcher.store(result_key(&meta.task_id), payload),
            Err(e) => tracing::error!("cannot encode the result of {}: {e}", meta.task_id),
        }
    }

    /// Sends everything queued and stops.
    pub(crate) async fn close(&self) {
        self.batcher.close().await;
    }
}
