//! [`RedisOptions`]: settings of kombu's Redis transport.

use std::time::Duration;

/// Settings only the Redis transport reads.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::WorkerConfig;
/// let config = WorkerConfig::new("redis://127.0.0.1:6379/0")
///     .visibility_timeout(Duration::from_secs(60));
/// assert_eq!(config.redis.visibility_timeout, Duration::from_secs(60));
/// assert_eq!(config.redis.fetch_batch, 1024);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisOptions {
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
    /// How a `sentinel://` broker URL finds its master.
    pub broker_sentinel: super::SentinelOptions,
    /// How a `sentinel://` result backend URL finds its master.
    pub backend_sentinel: super::SentinelOptions,
    /// Replicas that must hold each batch of results and acks before the
    /// worker counts it written (`WAIT`); 0, the default, waits for none
    /// (Redis replicates asynchronously). A batch fewer replicas confirm
    /// within [`sync_replicas_timeout`](Self::sync_replicas_timeout) is
    /// written again on a new connection (with Sentinel, to the master
    /// the sentinels name then).
    pub sync_replicas: u32,
    /// How long one `WAIT` waits for the replicas (default 1 s); under
    /// the command timeout.
    pub sync_replicas_timeout: Duration,
    /// The broker's key names (`global_keyprefix`, `sep`,
    /// `priority_steps`, ...), kombu's by default.
    pub keys: super::RedisKeys,
    /// The order queues are taken from (`queue_order_strategy`).
    pub queue_order: super::QueueOrder,
    /// The broker connection's `socket_timeout`,
    /// `socket_connect_timeout` and `health_check_interval`.
    pub broker_socket: super::SocketOptions,
    /// The result backend connection's (Celery's `redis_socket_timeout`,
    /// `redis_socket_connect_timeout`, `redis_backend_health_check_interval`;
    /// settable from Rust only).
    pub backend_socket: super::SocketOptions,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            visibility_timeout: Duration::from_secs(3600),
            restore_interval: Duration::from_secs(100),
            fetch_batch: 1024,
            legacy_fetch: false,
            broker_sentinel: super::SentinelOptions::default(),
            backend_sentinel: super::SentinelOptions::default(),
            sync_replicas: 0,
            sync_replicas_timeout: Duration::from_secs(1),
            keys: super::RedisKeys::default(),
            queue_order: super::QueueOrder::default(),
            broker_socket: super::SocketOptions::default(),
            backend_socket: super::SocketOptions::default(),
        }
    }
}

impl RedisOptions {
    /// Whether a broker transport option other than the visibility
    /// timeout was set (they only apply to a Redis broker).
    pub(crate) fn broker_transport_set(&self) -> bool {
        self.keys != super::RedisKeys::default()
            || self.queue_order != super::QueueOrder::default()
            || self.broker_socket != super::SocketOptions::default()
            || self.broker_sentinel != super::SentinelOptions::default()
    }

    /// Why these options cannot run a worker, if they cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.fetch_batch == 0 {
            return Some("fetch batch must be at least 1");
        }
        if self.visibility_timeout.is_zero() {
            return Some(
                "the visibility timeout must be longer than zero (every unacked message would \
                 go back to its queue at once)",
            );
        }
        if self.restore_interval.is_zero() {
            return Some("the restore interval must be longer than zero");
        }
        if self.sync_replicas > 0 && self.sync_replicas_timeout.as_millis() == 0 {
            return Some("the sync-replicas timeout must be at least 1 ms");
        }
        self.keys.problem()
    }
}
