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
    /// The broker's key names (Redis links only); every user of a link
    /// that builds a broker key reads them here.
    pub(crate) keys: crate::config::RedisKeys,
    /// `health_check_interval`: TCP keepalive's idle time before its
    /// first probe (Redis links only); `None`: [`KEEPALIVE_IDLE`].
    pub(crate) health_check_interval: Option<Duration>,
}

/// TCP keepalive's idle time before the first probe when no
/// `health_check_interval` is given.
#[cfg(feature = "redis")] // Redis links only
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
            sync_replicas: (c.redis.sync_replicas > 0)
                .then_some((c.redis.sync_replicas, c.redis.sync_replicas_timeout)),
            keys: c.redis.keys.clone(),
            health_check_interval: None,
        }
        .with_socket(&c.redis.broker_socket)
    }

    /// The worker's settings for its result backend's link.
    #[cfg(feature = "redis")] // Redis links only
    pub(crate) fn for_backend(c: &WorkerConfig) -> Self {
        let base = LinkSettings {
            sentinel: c.redis.backend_sentinel.clone(),
            health_check_interval: None,
            connect_timeout: c.connection.connect_timeout,
            command_timeout: c.connection.command_timeout,
            ..Self::from_config(c)
        };
        base.with_socket(&c.redis.backend_socket)
    }

    /// A client's settings: Celery's defaults.
    pub(crate) fn client() -> Self {
        Self::from_config(&WorkerConfig::new(""))
    }

    #[cfg(feature = "redis")] // Redis links only
    /// These settings with a connection's transport options applied
    /// (the key names matter on the broker's link only).
    pub(crate) fn with_transport(mut self, t: &crate::config::TransportOptions) -> Self {
        self.sentinel = t.sentinel.clone();
        self.keys = t.keys.clone();
        self.with_socket(&t.socket)
    }

    /// These settings with a connection's socket options applied: its
    /// `socket_timeout` is the command timeout, its
    /// `socket_connect_timeout` the connect timeout.
    fn with_socket(mut self, s: &crate::config::SocketOptions) -> Self {
        if let Some(d) = s.socket_timeout {
            self.command_timeout = d;
        }
        if let Some(d) = s.socket_connect_timeout {
            self.connect_timeout = d;
        }
        self.health_check_interval = s.health_check_interval;
        self
    }

    #[cfg(feature = "redis")] // Redis links only
    /// TCP keepalive's idle time before its first probe.
    pub(crate) fn keepalive_idle(&self) -> Duration {
        self.health_check_interval.unwrap_or(KEEPALIVE_IDLE)
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::TransportOptions;

    #[test]
    fn each_link_takes_its_own_socket_options() {
        let broker = TransportOptions::parse(
            r#"{"socket_timeout": 3, "health_check_interval": 20, "global_keyprefix": "gp:"}"#,
            "broker",
        )
        .unwrap();
        let mut c = WorkerConfig::new("redis://x").broker_transport_options(broker.clone());
        c.redis.backend_socket.socket_connect_timeout = Some(Duration::from_secs(1));
        let b = LinkSettings::from_config(&c);
        assert_eq!(b.command_timeout, Duration::from_secs(3));
        assert_eq!(b.connect_timeout, c.connection.connect_timeout);
        assert_eq!(b.keepalive_idle(), Duration::from_secs(20));
        assert_eq!(b.keys.global_keyprefix, "gp:");
        let r = LinkSettings::for_backend(&c);
        assert_eq!(r.command_timeout, c.connection.command_timeout);
        assert_eq!(r.connect_timeout, Duration::from_secs(1));
        assert_eq!(r.keepalive_idle(), KEEPALIVE_IDLE);
        let client = LinkSettings::client().with_transport(&broker);
        assert_eq!(client.command_timeout, Duration::from_secs(3));
        assert_eq!(client.keys.global_keyprefix, "gp:");
    }
}
