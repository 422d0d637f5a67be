//! Worker settings, from the builder, the environment or (in the CLI)
//! flags.

use std::time::Duration;

use crate::error::ConfigError;

/// Settings of a [`Worker`](crate::Worker).
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::WorkerConfig;
/// let config = WorkerConfig::new("redis://127.0.0.1:6379/0")
///     .concurrency(100)
///     .queues(["celery", "io"])
///     .visibility_timeout(Duration::from_secs(60));
/// assert_eq!(config.prefetch_count(), 400);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Broker URL: `redis://host:port/db`, or `amqp://user:pass@host:port/vhost`
    /// (also `amqps://`, `pyamqp://`) for RabbitMQ.
    pub broker_url: String,
    /// Result backend URL; `None` stores no results.
    pub result_backend: Option<String>,
    /// Jobs run at once: the pool limit (`-c`).
    pub concurrency: usize,
    /// Queues consumed (`-Q`), in order.
    pub queues: Vec<String>,
    /// Unacked messages allowed per pool slot
    /// (`worker_prefetch_multiplier`, default 4).
    pub prefetch_multiplier: usize,
    /// Node name, `celery@<host>` by default.
    pub hostname: String,
    /// Ack after the task ends instead of when it starts (`task_acks_late`).
    pub acks_late: bool,
    /// Result lifetime (`result_expires`, default one day); `None` keeps
    /// results forever.
    pub result_expires: Option<Duration>,
    /// After how long an unacked message is given back to its queue
    /// (kombu's `visibility_timeout`, default one hour).
    pub visibility_timeout: Duration,
    /// How often the restore sweep runs (kombu: interval × throttle,
    /// about 100 s).
    pub restore_interval: Duration,
    /// Most messages taken in one fetch.
    pub fetch_batch: usize,
    /// Move one message at a time (`RPOP`, `LPUSH`) inside the take
    /// script instead of `SORT … STORE` and `RENAME`, for servers where
    /// `SORT` or `RENAME` is renamed or forbidden. Slower, as safe.
    pub legacy_fetch: bool,
    /// Store STARTED (`{"pid", "hostname"}`) when a task starts
    /// (`task_track_started`, default off).
    pub track_started: bool,
    /// Also store name, args, kwargs, worker, retries and queue with each
    /// result (`result_extended`, default off).
    pub result_extended: bool,
    /// Send task events (`-E`, `worker_send_task_events`); worker events
    /// (online, heartbeat, offline) are sent either way.
    pub send_task_events: bool,
    /// `(max, min)` slots for the autoscaler (`--autoscale`); the pool
    /// starts at `min` and the prefetch window is sized for `max`.
    pub autoscale: Option<(usize, usize)>,
    /// Hard time limit in seconds for tasks whose message sets none
    /// (`task_time_limit`).
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds (`task_soft_time_limit`).
    pub soft_time_limit: Option<f64>,
    /// Reconnect when a Redis connection is lost while running
    /// (`broker_connection_retry`, default true). When false, the first
    /// loss stops the worker with an error.
    pub broker_connection_retry: bool,
    /// Reconnection attempts before giving up and stopping the worker with
    /// an error (`broker_connection_max_retries`, default 100); `None`
    /// retries forever (Celery also reads 0 that way).
    pub broker_connection_max_retries: Option<u32>,
    /// Retry the first connection at start (`broker_connection_retry_on_startup`);
    /// `None`, Celery's default, follows `broker_connection_retry`.
    pub broker_connection_retry_on_startup: Option<bool>,
    /// How long opening one connection may take (`broker_connection_timeout`,
    /// default 4 s).
    pub broker_connection_timeout: Duration,
    /// How long a Redis command may go unanswered before its connection
    /// counts as lost (default 10 s). Catches stalled peers that TCP
    /// keepalive cannot see.
    pub command_timeout: Duration,
    /// First delay between reconnection attempts; it doubles (with
    /// jitter) up to `reconnect_delay_max`. Default 1 s.
    pub reconnect_delay: Duration,
    /// Longest delay between reconnection attempts (default 30 s).
    pub reconnect_delay_max: Duration,
    /// Largest message accepted, in bytes (default 64 MiB). A larger one is
    /// taken off its queue inside Redis without being read, logged with its
    /// size, and failed.
    pub max_message_size: usize,
    /// AMQP: declare the queues with `x-max-priority` set to this
    /// (Celery's `task_queue_max_priority`); `None` declares none.
    pub queue_max_priority: Option<u8>,
    /// AMQP: declare the queues as quorum queues (`x-queue-type: quorum`),
    /// which rules out a global QoS (Celery 5.5+ does the same).
    pub quorum_queues: bool,
    /// Serve Prometheus metrics on `GET /metrics` at this address
    /// (`--metrics`); port 0 picks a free one, logged at start. `None`
    /// (the default) serves none; [`Worker::metrics`](crate::Worker::metrics)
    /// still counts.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The default message-size limit: 64 MiB. Celery and kombu set none, and
/// task messages are kilobytes; a message this large is almost surely a
/// mistake, and once decoded it takes several times its size in memory.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

fn default_hostname() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("celery@{host}")
}

impl WorkerConfig {
    /// Defaults (Celery's where it has one) for a worker on `broker_url`,
    /// storing results on the same Redis.
    pub fn new(broker_url: impl Into<String>) -> Self {
        let broker_url = broker_url.into();
        WorkerConfig {
            result_backend: Some(broker_url.clone()),
            broker_url,
            concurrency: 1000,
            queues: vec!["celery".to_owned()],
            prefetch_multiplier: 4,
            hostname: default_hostname(),
            acks_late: false,
            result_expires: Some(Duration::from_secs(86_400)),
            visibility_timeout: Duration::from_secs(3600),
            restore_interval: Duration::from_secs(100),
            fetch_batch: 1024,
            legacy_fetch: false,
            track_started: false,
            result_extended: false,
            send_task_events: false,
            autoscale: None,
            time_limit: None,
            soft_time_limit: None,
            broker_connection_retry: true,
            broker_connection_max_retries: Some(100),
            broker_connection_retry_on_startup: None,
            broker_connection_timeout: Duration::from_secs(4),
            command_timeout: Duration::from_secs(10),
            reconnect_delay: Duration::from_secs(1),
            reconnect_delay_max: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            queue_max_priority: None,
            quorum_queues: false,
            metrics: None,
        }
    }

    /// Sets the address the Prometheus metrics are served on.
    pub fn metrics(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.metrics = addr;
        self
    }

    /// Sets `broker_connection_retry`.
    pub fn broker_connection_retry(mut self, retry: bool) -> Self {
        self.broker_connection_retry = retry;
        self
    }
    /// Sets `broker_connection_max_retries` (`None` or `Some(0)`: forever).
    pub fn broker_connection_max_retries(mut self, n: Option<u32>) -> Self {
        self.broker_connection_max_retries = n.filter(|n| *n > 0);
        self
    }
    /// Sets `broker_connection_retry_on_startup`.
    pub fn broker_connection_retry_on_startup(mut self, retry: Option<bool>) -> Self {
        self.broker_connection_retry_on_startup = retry;
        self
    }
    /// Sets the connect timeout.
    pub fn broker_connection_timeout(mut self, d: Duration) -> Self {
        self.broker_connection_timeout = d;
        self
    }
    /// Sets the command timeout.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }
    /// Sets the first and the longest delay between reconnection attempts.
    pub fn reconnect_delay(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_delay = first;
        self.reconnect_delay_max = max.max(first);
        self
    }
    /// Sets the message-size limit in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Whether the first connection is retried: `broker_connection_retry_on_startup`,
    /// or `broker_connection_retry` when that is unset.
    pub fn retry_on_startup(&self) -> bool {
        self.broker_connection_retry_on_startup
            .unwrap_or(self.broker_connection_retry)
    }

    /// Sets the result backend URL (`None`: store no results).
    pub fn result_backend(mut self, url: Option<String>) -> Self {
        self.result_backend = url;
        self
    }
    /// Sets the pool limit.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// Sets the queues.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the prefetch multiplier.
    pub fn prefetch_multiplier(mut self, m: usize) -> Self {
        self.prefetch_multiplier = m;
        self
    }
    /// Sets the node name.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }
    /// Sets the default ack mode.
    pub fn acks_late(mut self, late: bool) -> Self {
        self.acks_late = late;
        self
    }
    /// Sets the result lifetime.
    pub fn result_expires(mut self, d: Option<Duration>) -> Self {
        self.result_expires = d;
        self
    }
    /// Sets the visibility timeout.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }
    /// Sets the restore sweep interval.
    pub fn restore_interval(mut self, d: Duration) -> Self {
        self.restore_interval = d;
        self
    }
    /// Sets the largest fetch.
    pub fn fetch_batch(mut self, n: usize) -> Self {
        self.fetch_batch = n;
        self
    }

    /// Stores STARTED when tasks start.
    pub fn track_started(mut self, track: bool) -> Self {
        self.track_started = track;
        self
    }

    /// Stores request details with results (`result_extended`).
    pub fn result_extended(mut self, extended: bool) -> Self {
        self.result_extended = extended;
        self
    }

    /// Sends task events (`-E`).
    pub fn send_task_events(mut self, on: bool) -> Self {
        self.send_task_events = on;
        self
    }

    /// Turns the autoscaler on between `min` and `max` slots; concurrency
    /// becomes `max`.
    pub fn autoscale(mut self, max: usize, min: usize) -> Self {
        self.autoscale = Some((max, min.min(max)));
        self.concurrency = max;
        self
    }

    /// Sets the default hard and soft time limits, in seconds.
    pub fn time_limits(mut self, hard: Option<f64>, soft: Option<f64>) -> Self {
        self.time_limit = hard;
        self.soft_time_limit = soft;
        self
    }

    /// The pool's limit at start: the autoscaler's minimum, else the
    /// concurrency.
    pub fn initial_pool_limit(&self) -> usize {
        self.autoscale.map_or(self.concurrency, |(_, min)| min)
    }

    /// Chooses the one-message-at-a-time move of the take script (for
    /// servers where `SORT` or `RENAME` is renamed or forbidden).
    pub fn legacy_fetch(mut self, legacy: bool) -> Self {
        self.legacy_fetch = legacy;
        self
    }

    /// AMQP: `x-max-priority` for the declared queues.
    pub fn queue_max_priority(mut self, max: Option<u8>) -> Self {
        self.queue_max_priority = max;
        self
    }

    /// AMQP: declare quorum queues.
    pub fn quorum_queues(mut self, quorum: bool) -> Self {
        self.quorum_queues = quorum;
        self
    }

    /// The cap on unacked messages: concurrency × prefetch multiplier.
    pub fn prefetch_count(&self) -> usize {
        self.concurrency.saturating_mul(self.prefetch_multiplier)
    }

    /// Overrides settings from `GREENPOOL_*` environment variables:
    /// `BROKER_URL`, `RESULT_BACKEND` (empty: none), `CONCURRENCY`,
    /// `QUEUES` (comma-separated), `PREFETCH_MULTIPLIER`, `HOSTNAME`,
    /// `ACKS_LATE`, `TRACK_STARTED` and `RESULT_EXTENDED` (true/false/1/0), `RESULT_EXPIRES` (seconds, 0: never),
    /// `VISIBILITY_TIMEOUT` and `RESTORE_INTERVAL` (seconds),
    /// `BROKER_CONNECTION_RETRY` and `BROKER_CONNECTION_RETRY_ON_STARTUP`
    /// (true/false), `BROKER_CONNECTION_MAX_RETRIES` (0: forever) and
    /// `MAX_MESSAGE_SIZE` (bytes).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] for a value that does not parse.
    pub fn with_env(self) -> Result<Self, ConfigError> {
        self.with_vars(|k| std::env::var(k).ok())
    }

    fn with_vars(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn num(name: &'static str, v: String) -> Result<u64, ConfigError> {
            v.trim().parse().map_err(|_| ConfigError::Env {
                name,
                value: v,
                reason: "expected a whole number",
            })
        }
        fn secs(name: &'static str, v: String) -> Result<Duration, ConfigError> {
            match v.trim().parse::<f64>() {
                Ok(s) => {
                    crate::seconds::duration_from_secs(name, s).map_err(|_| ConfigError::Env {
                        name,
                        value: v,
                        reason: "expected zero or more seconds, at most 100 years",
                    })
                }
                _ => Err(ConfigError::Env {
                    name,
                    value: v,
                    reason: "expected seconds",
                }),
            }
        }
        if let Some(v) = get("GREENPOOL_BROKER_URL") {
            self.broker_url = v;
        }
        if let Some(v) = get("GREENPOOL_RESULT_BACKEND") {
            self.result_backend = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("GREENPOOL_CONCURRENCY") {
            self.concurrency = num("GREENPOOL_CONCURRENCY", v)? as usize;
        }
        if let Some(v) = get("GREENPOOL_QUEUES") {
            self.queues = v
                .split(',')
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("GREENPOOL_PREFETCH_MULTIPLIER") {
            self.prefetch_multiplier = num("GREENPOOL_PREFETCH_MULTIPLIER", v)? as usize;
        }
        if let Some(v) = get("GREENPOOL_HOSTNAME") {
            self.hostname = v;
        }
        fn flag(name: &'static str, v: String) -> Result<bool, ConfigError> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" | "" => Ok(false),
                _ => Err(ConfigError::Env {
                    name,
                    value: v,
                    reason: "expected true or false",
                }),
            }
        }
        if let Some(v) = get("GREENPOOL_ACKS_LATE") {
            self.acks_late = flag("GREENPOOL_ACKS_LATE", v)?;
        }
        if let Some(v) = get("GREENPOOL_TRACK_STARTED") {
            self.track_started = flag("GREENPOOL_TRACK_STARTED", v)?;
        }
        if let Some(v) = get("GREENPOOL_RESULT_EXTENDED") {
            self.result_extended = flag("GREENPOOL_RESULT_EXTENDED", v)?;
        }
        if let Some(v) = get("GREENPOOL_RESULT_EXPIRES") {
            let d = secs("GREENPOOL_RESULT_EXPIRES", v)?;
            self.result_expires = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = get("GREENPOOL_VISIBILITY_TIMEOUT") {
            self.visibility_timeout = secs("GREENPOOL_VISIBILITY_TIMEOUT", v)?;
        }
        if let Some(v) = get("GREENPOOL_RESTORE_INTERVAL") {
            self.restore_interval = secs("GREENPOOL_RESTORE_INTERVAL", v)?;
        }
        if let Some(v) = get("GREENPOOL_BROKER_CONNECTION_RETRY") {
            self.broker_connection_retry = flag("GREENPOOL_BROKER_CONNECTION_RETRY", v)?;
        }
        if let Some(v) = get("GREENPOOL_BROKER_CONNECTION_MAX_RETRIES") {
            let n = num("GREENPOOL_BROKER_CONNECTION_MAX_RETRIES", v)?;
            self.broker_connection_max_retries = u32::try_from(n).ok().filter(|n| *n > 0);
        }
        if let Some(v) = get("GREENPOOL_BROKER_CONNECTION_RETRY_ON_STARTUP") {
            self.broker_connection_retry_on_startup =
                Some(flag("GREENPOOL_BROKER_CONNECTION_RETRY_ON_STARTUP", v)?);
        }
        if let Some(v) = get("GREENPOOL_MAX_MESSAGE_SIZE") {
            self.max_message_size =
                usize::try_from(num("GREENPOOL_MAX_MESSAGE_SIZE", v)?).unwrap_or(usize::MAX);
        }
        Ok(self)
    }

    /// Checks that the settings can run a worker.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for zero concurrency, prefetch multiplier
    /// or fetch batch, or no queue.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::Invalid("concurrency must be at least 1"));
        }
        if self.prefetch_multiplier == 0 {
            return Err(ConfigError::Invalid(
                "prefetch multiplier must be at least 1 (unlimited prefetch is not supported)",
            ));
        }
        if self.fetch_batch == 0 {
            return Err(ConfigError::Invalid("fetch batch must be at least 1"));
        }
        if self.queues.is_empty() {
            return Err(ConfigError::Invalid("name at least one queue to consume"));
        }
        if self.autoscale.is_some_and(|(max, _)| max == 0) {
            return Err(ConfigError::Invalid("autoscale maximum must be at least 1"));
        }
        if self.command_timeout.is_zero() || self.broker_connection_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "command and connection timeouts must be longer than zero",
            ));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError::Invalid(
                "the message-size limit must be at least 1 byte",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn environment_overrides_defaults() {
        let vars: HashMap<&str, &str> = [
            ("GREENPOOL_CONCURRENCY", "7"),
            ("GREENPOOL_QUEUES", "a, b,,c"),
            ("GREENPOOL_ACKS_LATE", "yes"),
            ("GREENPOOL_RESULT_EXPIRES", "0"),
            ("GREENPOOL_VISIBILITY_TIMEOUT", "2.5"),
            ("GREENPOOL_RESULT_BACKEND", ""),
        ]
        .into_iter()
        .collect();
        let c = WorkerConfig::new("redis://x")
            .with_vars(|k| vars.get(k).map(|v| (*v).to_owned()))
            .unwrap();
        assert_eq!(c.concurrency, 7);
        assert_eq!(c.queues, ["a", "b", "c"]);
        assert!(c.acks_late);
        assert_eq!(c.result_expires, None);
        assert_eq!(c.result_backend, None);
        assert_eq!(c.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(c.prefetch_count(), 28);
    }

    #[test]
    fn bad_values_are_reported() {
        let e = WorkerConfig::new("redis://x")
            .with_vars(|k| (k == "GREENPOOL_CONCURRENCY").then(|| "many".to_owned()))
            .unwrap_err();
        assert!(e.to_string().contains("GREENPOOL_CONCURRENCY"), "{e}");
        for huge in ["1e20", "NaN", "-1", "inf"] {
            let e = WorkerConfig::new("redis://x")
                .with_vars(|k| (k == "GREENPOOL_VISIBILITY_TIMEOUT").then(|| huge.to_owned()))
                .unwrap_err();
            assert!(
                e.to_string().contains("GREENPOOL_VISIBILITY_TIMEOUT"),
                "{e}"
            );
        }
        assert!(WorkerConfig::new("x").concurrency(0).validate().is_err());
        assert!(WorkerConfig::new("x")
            .queues(Vec::<String>::new())
            .validate()
            .is_err());
    }
}
