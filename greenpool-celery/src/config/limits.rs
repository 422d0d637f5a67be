//! [`Limits`]: how long a task may run and how large a message may be.

/// The default message-size limit: 64 MiB. Celery and kombu set none, and
/// task messages are kilobytes; a message this large is almost surely a
/// mistake, and once decoded it takes several times its size in memory.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Limits on tasks and messages.
///
/// ```
/// use greenpool_celery::WorkerConfig;
/// let mut config = WorkerConfig::new("redis://127.0.0.1:6379/0");
/// config.limits.time_limit = Some(30.0);
/// config.limits.soft_time_limit = Some(25.0);
/// assert!(config.validate().is_ok());
/// config.limits.time_limit = Some(f64::NAN);
/// assert!(config.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// Hard time limit in seconds for tasks whose message sets none
    /// (`task_time_limit`).
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds (`task_soft_time_limit`).
    pub soft_time_limit: Option<f64>,
    /// Largest message accepted, in bytes (default 64 MiB). A larger one is
    /// taken off its queue without being read, logged with its size, and
    /// failed.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time_limit: None,
            soft_time_limit: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl Limits {
    /// Why these limits cannot run a worker, if they cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        let bad = |s: Option<f64>| s.is_some_and(|s| !(s.is_finite() && s > 0.0));
        if bad(self.time_limit) || bad(self.soft_time_limit) {
            return Some("time limits must be positive, finite numbers of seconds");
        }
        if self.max_message_size == 0 {
            return Some("the message-size limit must be at least 1 byte");
        }
        None
    }
}
