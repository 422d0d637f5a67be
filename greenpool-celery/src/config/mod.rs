//! Worker settings, from the builder, the environment or (in the CLI)
//! flags: the common ones on [`WorkerConfig`] itself, the rest in groups
//! (one file each): [`Limits`], [`ConnectionPolicy`], [`RedisOptions`],
//! [`AmqpOptions`]; the `GREENPOOL_*` variables in `env.rs`. Every rule a
//! worker's settings must keep is checked in [`WorkerConfig::validate`].

mod amqp;
mod connection;
mod env;
mod limits;
mod redis;
mod redis_keys;
mod sentinel;
mod socket_options;
mod transport_options;

use std::time::Duration;

pub use self::amqp::AmqpOptions;
pub use self::connection::ConnectionPolicy;
pub use self::env::WORKER_VARIABLES;
pub use self::limits::{Limits, DEFAULT_MAX_MESSAGE_SIZE};
pub use self::redis::RedisOptions;
pub use self::redis_keys::RedisKeys;
#[cfg(feature = "redis")]
pub(crate) use self::redis_keys::DEFAULT_SEP;
pub use self::sentinel::SentinelOptions;
pub use self::socket_options::SocketOptions;
pub use self::transport_options::{QueueOrder, TransportOptions};
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
/// assert_eq!(config.redis.visibility_timeout, Duration::from_secs(60));
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
    /// Serve Prometheus metrics on `GET /metrics` at this address
    /// (`--metrics`); port 0 picks a free one, logged at start. `None`
    /// (the default) serves none; [`Worker::metrics`](crate::Worker::metrics)
    /// still counts.
    pub metrics: Option<std::net::SocketAddr>,
    /// Time limits and the message-size limit.
    pub limits: Limits,
    /// How connections connect, retry and give up.
    pub connection: ConnectionPolicy,
    /// Settings of kombu's Redis transport.
    pub redis: RedisOptions,
    /// Settings of the AMQP transport.
    pub amqp: AmqpOptions,
}

/// The machine's host name, as the OS gives it (`localhost` when it gives
/// none that is text).
pub fn host_name() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The node name for `-n NAME`, as Celery reads it: `%h` is the host
/// name, and a name without `@` gets `celery@` in front.
///
/// ```
/// let name = greenpool_celery::node_name("w1@%h");
/// assert!(name.starts_with("w1@") && !name.contains("%h"));
/// assert_eq!(greenpool_celery::node_name("w2"), "celery@w2");
/// ```
pub fn node_name(template: &str) -> String {
    let name = if template.contains("%h") {
        template.replace("%h", &host_name())
    } else {
        template.to_owned()
    };
    if name.contains('@') {
        name
    } else {
        format!("celery@{name}")
    }
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
            hostname: format!("celery@{}", host_name()),
            acks_late: false,
            result_expires: Some(Duration::from_secs(86_400)),
            track_started: false,
            result_extended: false,
            send_task_events: false,
            autoscale: None,
            metrics: None,
            limits: Limits::default(),
            connection: ConnectionPolicy::default(),
            redis: RedisOptions::default(),
            amqp: AmqpOptions::default(),
        }
    }

    /// Sets the address the Prometheus metrics are served on.
    pub fn metrics(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.metrics = addr;
        self
    }

    /// Sets `broker_connection_retry`.
    pub fn broker_connection_retry(mut self, retry: bool) -> Self {
        self.connection.retry = retry;
        self
    }
    /// Sets `broker_connection_max_retries` (`None` or `Some(0)`: forever).
    pub fn broker_connection_max_retries(mut self, n: Option<u32>) -> Self {
        self.connection.max_retries = n.filter(|n| *n > 0);
        self
    }
    /// Sets `broker_connection_retry_on_startup`.
    pub fn broker_connection_retry_on_startup(mut self, retry: Option<bool>) -> Self {
        self.connection.retry_on_startup = retry;
        self
    }
    /// Sets the connect timeout.
    pub fn broker_connection_timeout(mut self, d: Duration) -> Self {
        self.connection.connect_timeout = d;
        self
    }
    /// Sets the command timeout.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.connection.command_timeout = d;
        self
    }
    /// Sets the first and the longest delay between reconnection attempts.
    pub fn reconnect_delay(mut self, first: Duration, max: Duration) -> Self {
        self.connection.reconnect_delay = first;
        self.connection.reconnect_delay_max = max.max(first);
        self
    }
    /// Sets the message-size limit in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.limits.max_message_size = bytes;
        self
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
    /// Applies Celery's `broker_transport_options` (a
    /// [`TransportOptions`], e.g. read from JSON): the sentinel settings
    /// of a `sentinel://` broker URL, the visibility timeout (when given),
    /// the key names, the queue order and the socket options.
    pub fn broker_transport_options(mut self, t: TransportOptions) -> Self {
        self.redis.broker_sentinel = t.sentinel;
        if let Some(d) = t.visibility_timeout {
            self.redis.visibility_timeout = d;
        }
        self.redis.keys = t.keys;
        self.redis.queue_order = t.queue_order_strategy;
        self.redis.broker_socket = t.socket;
        self
    }
    /// Applies Celery's `result_backend_transport_options`: the sentinel
    /// settings of a `sentinel://` result backend URL.
    pub fn result_backend_transport_options(mut self, t: TransportOptions) -> Self {
        self.redis.backend_sentinel = t.sentinel;
        self.redis.backend_socket = t.socket;
        self
    }
    /// Sets the visibility timeout (Redis).
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.redis.visibility_timeout = d;
        self
    }
    /// Sets the restore sweep interval (Redis).
    pub fn restore_interval(mut self, d: Duration) -> Self {
        self.redis.restore_interval = d;
        self
    }
    /// Waits for `replicas` Redis replicas to hold each batch of results
    /// and acks, `timeout` at most per batch, before counting it written
    /// (see [`RedisOptions::sync_replicas`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenpool_celery::WorkerConfig;
    /// let c = WorkerConfig::new("sentinel://127.0.0.1:26379/0")
    ///     .sync_replicas(1, Duration::from_millis(500));
    /// assert_eq!(c.redis.sync_replicas, 1);
    /// ```
    pub fn sync_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.redis.sync_replicas = replicas;
        self.redis.sync_replicas_timeout = timeout;
        self
    }
    /// Sets the largest fetch (Redis).
    pub fn fetch_batch(mut self, n: usize) -> Self {
        self.redis.fetch_batch = n;
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
        self.limits.time_limit = hard;
        self.limits.soft_time_limit = soft;
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
        self.redis.legacy_fetch = legacy;
        self
    }

    /// AMQP: `x-max-priority` for the declared queues.
    pub fn queue_max_priority(mut self, max: Option<u8>) -> Self {
        self.amqp.queue_max_priority = max;
        self
    }

    /// AMQP: declare quorum queues.
    pub fn quorum_queues(mut self, quorum: bool) -> Self {
        self.amqp.quorum_queues = quorum;
        self
    }

    /// The cap on unacked messages: concurrency × prefetch multiplier.
    pub fn prefetch_count(&self) -> usize {
        self.concurrency.saturating_mul(self.prefetch_multiplier)
    }

    /// Overrides settings from the `GREENPOOL_*` environment variables
    /// listed in [`WORKER_VARIABLES`] (flags: true/false/1/0/yes/no/on/off;
    /// durations: seconds; `GREENPOOL_RESULT_BACKEND` empty or `none`: no
    /// results; `GREENPOOL_RESULT_EXPIRES` and
    /// `GREENPOOL_BROKER_CONNECTION_MAX_RETRIES` 0: for ever;
    /// `GREENPOOL_HOSTNAME` as [`node_name`] reads it).
    ///
    /// ```
    /// let config = greenpool_celery::WorkerConfig::new("redis://127.0.0.1:6379/0").with_env()?;
    /// config.validate()?;
    /// # Ok::<(), greenpool_celery::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] for a value that does not parse, naming the
    /// variable and what it expects.
    pub fn with_env(self) -> Result<Self, ConfigError> {
        env::apply(self, |k| std::env::var(k).ok())
    }

    /// Checks that the settings can run a worker: every rule in one place.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] saying which rule is broken: zero
    /// concurrency, prefetch multiplier or fetch batch; no queue or an
    /// empty queue name; an empty node name; an autoscale minimum above
    /// its maximum (or a maximum of zero, or one that is not the
    /// concurrency); a window (concurrency × multiplier) beyond what can
    /// be counted; time limits that are not positive finite seconds; zero
    /// timeouts, visibility timeout or restore interval; a first
    /// reconnection delay above the longest; a message-size limit of 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rule = |broken: bool, why: &'static str| {
            if broken {
                Err(ConfigError::Invalid(why))
            } else {
                Ok(())
            }
        };
        rule(self.concurrency == 0, "concurrency must be at least 1")?;
        rule(
            self.prefetch_multiplier == 0,
            "prefetch multiplier must be at least 1 (unlimited prefetch is not supported)",
        )?;
        rule(
            self.concurrency
                .checked_mul(self.prefetch_multiplier)
                .is_none()
                || i64::try_from(self.concurrency).is_err(),
            "concurrency × prefetch multiplier is too large to count",
        )?;
        rule(self.queues.is_empty(), "name at least one queue to consume")?;
        rule(
            self.queues.iter().any(|q| q.trim().is_empty()),
            "a queue name must not be empty",
        )?;
        rule(
            self.hostname.trim().is_empty(),
            "the node name must not be empty",
        )?;
        if let Some((max, min)) = self.autoscale {
            rule(max == 0, "autoscale maximum must be at least 1")?;
            rule(min > max, "autoscale minimum must not exceed its maximum")?;
            rule(
                max != self.concurrency,
                "with autoscale, concurrency is the autoscale maximum",
            )?;
        }
        rule(
            self.redis.sync_replicas > 0
                && [&self.redis.broker_socket, &self.redis.backend_socket]
                    .iter()
                    .any(|s| {
                        self.redis.sync_replicas_timeout
                            >= s.socket_timeout.unwrap_or(self.connection.command_timeout)
                    }),
            "the sync-replicas timeout must be shorter than the command timeout (a WAIT \
             outlasting it would read as a lost connection)",
        )?;
        let amqp = ["amqp://", "amqps://", "pyamqp://"]
            .iter()
            .any(|s| self.broker_url.starts_with(s));
        rule(
            amqp && self.redis.broker_transport_set(),
            "Redis broker transport options (key names, queue_order_strategy, socket options, \
             master_name, sentinel_kwargs) do not apply to an AMQP broker",
        )?;
        let problem = [
            self.limits.problem(),
            self.connection.problem(),
            self.redis.problem(),
        ]
        .into_iter()
        .flatten()
        .next();
        problem.map_or(Ok(()), |why| Err(ConfigError::Invalid(why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_of_validate_is_checked() {
        let ok = WorkerConfig::new("redis://x");
        assert!(ok.validate().is_ok());
        let mut cases: Vec<(WorkerConfig, &str)> = vec![
            (ok.clone().concurrency(0), "concurrency"),
            (ok.clone().prefetch_multiplier(0), "prefetch"),
            (
                ok.clone().concurrency(usize::MAX).prefetch_multiplier(2),
                "too large",
            ),
            (ok.clone().queues(Vec::<String>::new()), "queue"),
            (ok.clone().queues(["a", " "]), "queue name"),
            (ok.clone().hostname(""), "node name"),
            (ok.clone().fetch_batch(0), "fetch batch"),
            (ok.clone().visibility_timeout(Duration::ZERO), "visibility"),
            (
                ok.clone().restore_interval(Duration::ZERO),
                "restore interval",
            ),
            (ok.clone().command_timeout(Duration::ZERO), "timeouts"),
            (ok.clone().max_message_size(0), "message-size"),
            (ok.clone().time_limits(Some(f64::NAN), None), "time limits"),
            (ok.clone().time_limits(None, Some(-1.0)), "time limits"),
        ];
        let mut scaled = ok.clone().autoscale(10, 2);
        scaled.autoscale = Some((10, 11));
        cases.push((scaled, "minimum"));
        let mut scaled = ok.clone().autoscale(10, 2);
        scaled.concurrency = 5;
        cases.push((scaled, "autoscale maximum"));
        let mut delays = ok.clone();
        delays.connection.reconnect_delay = Duration::from_secs(5);
        delays.connection.reconnect_delay_max = Duration::from_secs(1);
        cases.push((delays, "reconnection delay"));
        let mut steps = ok.clone();
        steps.redis.keys.priority_steps.clear();
        cases.push((steps, "priority_steps"));
        let prefixed = TransportOptions::parse(r#"{"global_keyprefix": "gp:"}"#, "broker").unwrap();
        cases.push((
            WorkerConfig::new("amqp://x").broker_transport_options(prefixed.clone()),
            "do not apply to an AMQP broker",
        ));
        assert!(ok
            .clone()
            .broker_transport_options(prefixed)
            .validate()
            .is_ok());
        for (config, why) in cases {
            let e = config.validate().err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(why)),
                "expected an error about {why:?}, got {e:?}"
            );
        }
        assert!(ok.autoscale(10, 2).validate().is_ok());
    }

    #[test]
    fn node_names_read_as_celery_reads_them() {
        assert_eq!(node_name("a@b"), "a@b");
        assert_eq!(node_name("w"), "celery@w");
        assert_eq!(node_name("w@%h"), format!("w@{}", host_name()));
        assert!(WorkerConfig::new("x").hostname.starts_with("celery@"));
    }
}
