//! How a connection connects, retries and gives up: shared by the Redis
//! links and the AMQP sessions.

use std::time::Duration;

use super::Backoff;
use crate::config::WorkerConfig;

/// How a link connects and when it gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// Reconnect after a loss.
    pub(crate) retry: bool,
    /// Retry the first connection.
    pub(crate) retry_on_startup: bool,
    /// Attempts before giving up; `None`: forever.
    pub(crate) max_retries: Option<u32>,
    pub(crate) backoff: Backoff,
    /// How a `sentinel://` URL finds its master (Redis links only).
    pub(crate) sentinel: crate::config::SentinelOptions,
    /// Replicas a write through [`Link::write_until_done`] must reach, and
    /// how long to wait for them (Redis links only; `None`: no `WAIT`).
    ///
    /// [`Link::write_until_done`]: super::Link::write_until_done
    pub(crate) sync_replicas: Option<(u32, Duration)>,
}

impl LinkSettings {
    /// The worker's settings.
    pub(crate) fn from_config(c: &WorkerConfig) -> Self {
        LinkSettings {
            connect_timeout: c.connection.connect_timeout,
            command_timeout: c.connection.command_timeout,
            retry: c.connection.retry,
            retry_on_startup: c.connection.retry_on_startup(),
            max_retries: c.connection.max_retries,
            backoff: Backoff {
                first: c.connection.reconnect_delay,
                max: c.connection.reconnect_delay_max,
            },
            sentinel: c.redis.broker_sentinel.clone(),
            sync_replicas: (c.redis.sync_replicas > 0)
                .then_some((c.redis.sync_replicas, c.redis.sync_replicas_timeout)),
        }
    }

    /// The worker's settings for its result backend's link.
    #[cfg(feature = "redis")]
    pub(crate) fn for_backend(c: &WorkerConfig) -> Self {
        LinkSettings {
            sentinel: c.redis.backend_sentinel.clone(),
            ..Self::from_config(c)
        }
    }

    /// A client's settings: Celery's defaults.
    pub(crate) fn client() -> Self {
        Self::from_config(&WorkerConfig::new(""))
    }
}
