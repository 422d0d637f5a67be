//! [`ConnectionPolicy`]: how the worker's connections connect, time out,
//! retry and give up (Celery's `broker_connection_*` settings).

use std::time::Duration;

/// How connections to the broker and the result backend are kept.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::WorkerConfig;
/// let config = WorkerConfig::new("redis://127.0.0.1:6379/0")
///     .broker_connection_max_retries(Some(5))
///     .reconnect_delay(Duration::from_millis(100), Duration::from_secs(2));
/// assert_eq!(config.connection.max_retries, Some(5));
/// assert!(config.connection.retry_on_startup());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConnectionPolicy {
    /// Reconnect when a connection is lost while running
    /// (`broker_connection_retry`, default true). When false, the first
    /// loss stops the worker with an error.
    pub retry: bool,
    /// Reconnection attempts before giving up and stopping the worker with
    /// an error (`broker_connection_max_retries`, default 100); `None`
    /// retries forever (Celery also reads 0 that way).
    pub max_retries: Option<u32>,
    /// Retry the first connection at start
    /// (`broker_connection_retry_on_startup`); `None`, Celery's default,
    /// follows `retry`.
    pub retry_on_startup: Option<bool>,
    /// How long opening one connection may take
    /// (`broker_connection_timeout`, default 4 s).
    pub connect_timeout: Duration,
    /// How long a command may go unanswered before its connection counts
    /// as lost (default 10 s). Catches stalled peers that TCP keepalive
    /// cannot see.
    pub command_timeout: Duration,
    /// First delay between reconnection attempts; it doubles (with
    /// jitter) up to `reconnect_delay_max`. Default 1 s.
    pub reconnect_delay: Duration,
    /// Longest delay between reconnection attempts (default 30 s).
    pub reconnect_delay_max: Duration,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy {
            retry: true,
            max_retries: Some(100),
            retry_on_startup: None,
            connect_timeout: Duration::from_secs(4),
            command_timeout: Duration::from_secs(10),
            reconnect_delay: Duration::from_secs(1),
            reconnect_delay_max: Duration::from_secs(30),
        }
    }
}

impl ConnectionPolicy {
    /// Whether the first connection is retried: `retry_on_startup`, or
    /// `retry` when that is unset.
    pub fn retry_on_startup(&self) -> bool {
        self.retry_on_startup.unwrap_or(self.retry)
    }

    /// Why this policy cannot run a worker, if it cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Some("command and connection timeouts must be longer than zero");
        }
        if self.reconnect_delay > self.reconnect_delay_max {
            return Some("the first reconnection delay must not exceed the longest");
        }
        None
    }
}
