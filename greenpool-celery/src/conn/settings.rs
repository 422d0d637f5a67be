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
    /// The broker's key names (Redis links only); every user of a link
    /// that builds a broker key reads them here.
    pub(crate) keys: crate::config::RedisKeys,
    /// `health_check_interval`: TCP keepalive's idle time before its
    /// first probe (Redis links only); `None`: [`KEEPALIVE_IDLE`].
    pub(crate) health_check_interval: Option<Duration>,
}

/// TCP keepalive's idle time before the first probe when no
/// `health_check_interval` is given.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

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
            keys: c.redis.keys.clone(),
            health_check_interval: c.redis.broker_health_check_interval,
        }
    }

    /// The worker's settings for its result backend's link.
    pub(crate) fn for_backend(c: &WorkerConfig) -> Self {
        LinkSettings {
            sentinel: c.redis.backend_sentinel.clone(),
            health_check_interval: c.redis.backend_health_check_interval,
            ..Self::from_config(c)
        }
    }

    /// A client's settings: Celery's defaults.
    pub(crate) fn client() -> Self {
        Self::from_config(&WorkerConfig::new(""))
    }

    /// These settings with a connection's transport options applied
    /// (the key names matter on the broker's link only).
    pub(crate) fn with_transport(mut self, t: &crate::config::TransportOptions) -> Self {
        self.sentinel = t.sentinel.clone();
        self.keys = t.keys.clone();
        self.health_check_interval = t.health_check_interval;
        self
    }

    /// TCP keepalive's idle time before its first probe.
    pub(crate) fn keepalive_idle(&self) -> Duration {
        self.health_check_interval.unwrap_or(KEEPALIVE_IDLE)
    }
}
