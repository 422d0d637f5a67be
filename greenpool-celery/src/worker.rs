//! The worker: consume, run each request as a job in a greenpool
//! [`TaskPool`], ack, store the outcome.
//!
//! # A message's path
//!
//! 1. The broker's consumer (`broker/redis/consumer.rs` or
//!    `broker/amqp/consumer.rs`) takes messages within the prefetch window
//!    (concurrency × multiplier unacked messages): on Redis in one fetch,
//!    each message in the `unacked` hash from then on; on AMQP as the
//!    broker delivers them under `basic.qos`.
//! 2. Its handler decodes it. A message that cannot run (unreadable,
//!    out-of-range numbers, an unknown character set, an unknown task
//!    name) is logged once and acked; where its task id can be read it
//!    also gets a FAILURE result (`NotRegistered` for an unknown name, as
//!    Celery does) so that the caller's `get()` raises; an expired one
//!    stores REVOKED.
//! 3. A message with a future ETA waits on the pool's green
//!    [`Timer`](greenpool::Timer), still unacked and no longer counted
//!    against the prefetch budget.
//! 4. It is applied to the pool, waiting for a slot. When the job first
//!    runs it is acked (early ack), unless the task acks late.
//! 5. When the job ends, its result callback stores SUCCESS or FAILURE
//!    and, for late acks, acks. Results and follow-up messages of many
//!    jobs are written first and their acks only after them, in one
//!    atomic script per batch (see `batch.rs` and `RELIABILITY.md`).
//!
//! # Shutdown
//!
//! Warm ([`ShutdownHandle::warm`]): stop fetching, close the pool (waiting
//! requests are refused and put back), let running jobs finish and store
//! their results, then put every message still unacked back at the front
//! of its queue. Cold ([`ShutdownHandle::cold`]): as warm, but running jobs
//! are killed; their messages are put back if they ack late.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use greenpool::{TaskPool, Timer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backend::{ResultMeta, TaskState};
use crate::broker::Oversized;
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::metrics::http::MetricsServer;
use crate::metrics::WorkerMetrics;
use crate::outbox::{Outbox, ResultStore};
use crate::protocol::TaskMessage;
use crate::registry::TaskRegistry;
use crate::stats::RedisStats;
use crate::task_error::TaskError;

/// Stops a running worker: warm first, cold if asked again.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(crate) warm: CancellationToken,
    pub(crate) cold: CancellationToken,
}

impl ShutdownHandle {
    /// Stops consuming, lets running tasks finish and gives back the rest.
    pub fn warm(&self) {
        self.warm.cancel();
    }

    /// Also kills running tasks.
    pub fn cold(&self) {
        self.warm.cancel();
        self.cold.cancel();
    }

    /// Warm on the first call, cold on the next (as Celery treats a second
    /// SIGTERM/SIGINT). Returns true if this call made it cold.
    pub fn escalate(&self) -> bool {
        if self.warm.is_cancelled() {
            self.cold.cancel();
            true
        } else {
            self.warm.cancel();
            false
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Messages taken off the queues.
    pub received: u64,
    /// Tasks that returned a value.
    pub succeeded: u64,
    /// Tasks that failed (errors, panics, time limits, unknown names).
    pub failed: u64,
    /// Messages revoked (expired).
    pub revoked: u64,
    /// Retries sent on (each also counts as received when it comes back).
    pub retried: u64,
    /// Messages put back on their queues at shutdown.
    pub restored: u64,
}

/// A Celery worker on kombu's Redis transport or on AMQP (chosen by the
/// broker URL's scheme; the transports live in `broker/redis/` and
/// `broker/amqp/`, this type and the request path are shared).
///
/// ```no_run
/// use greenpool_celery::{TaskContext, TaskError, TaskRegistry, Worker, WorkerConfig};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut tasks = TaskRegistry::new();
/// tasks.register("tasks.add", &["x", "y"], |_: TaskContext, (x, y): (i64, i64)| async move {
///     Ok::<_, TaskError>(x + y)
/// });
/// let worker = Worker::new(WorkerConfig::new("redis://127.0.0.1:6379/0"), tasks)?;
/// let stop = worker.shutdown_handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.warm();
/// });
/// worker.run().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    registry: Arc<TaskRegistry>,
    shutdown: ShutdownHandle,
    stats: Arc<RedisStats>,
    ready: Arc<tokio::sync::Notify>,
    metrics: Arc<WorkerMetrics>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: std::sync::atomic::AtomicU64,
    pub(crate) succeeded: std::sync::atomic::AtomicU64,
    pub(crate) failed: std::sync::atomic::AtomicU64,
    pub(crate) revoked: std::sync::atomic::AtomicU64,
    pub(crate) retried: std::sync::atomic::AtomicU64,
}

/// State shared by the consumer and every message handler.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    pub(crate) registry: Arc<TaskRegistry>,
    pub(crate) pool: TaskPool,
    pub(crate) acks: Outbox,
    pub(crate) backend: Option<ResultStore>,
    /// Delivery tags taken but not yet acked, restored at shutdown.
    pub(crate) outstanding: Mutex<HashSet<String>>,
    pub(crate) warm: CancellationToken,
    pub(crate) counters: Counters,
    /// The green timer ETA requests wait on.
    pub(crate) timer: Timer,
    /// The node remote control and events see.
    pub(crate) control: Arc<crate::control::Node>,
    /// The node name, shared by every task's context.
    pub(crate) hostname: Arc<str>,
}

pub(crate) fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Shared {
    /// The state of a worker that has not taken a message yet: no tag
    /// outstanding, counters at zero, a timer of its own.
    pub(crate) fn new(
        config: WorkerConfig,
        registry: Arc<TaskRegistry>,
        pool: TaskPool,
        acks: Outbox,
        backend: Option<ResultStore>,
        shutdown: &ShutdownHandle,
        control: Arc<crate::control::Node>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            hostname: Arc::from(config.hostname.as_str()),
            config,
            registry,
            pool,
            acks,
            backend,
            outstanding: Mutex::new(HashSet::new()),
            warm: shutdown.warm.clone(),
            counters: Counters::default(),
            timer: TaskPool::new_timer(),
            control,
        })
    }

    pub(crate) fn ack(&self, tag: &str) {
        // The tag held in the set goes on to the ack: no copy.
        let held = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(tag);
        if let Some(tag) = held {
            self.acks.ack(tag);
        }
    }

    /// Puts a delivered message back on its queue (a requeueing
    /// reject): `payload` pushed on `key` and the delivery acked, in that
    /// order, on Redis (one atomic batch); `basic.reject` with requeue on
    /// AMQP.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn requeue(&self, tag: &str, key: String, payload: String) {
        let removed = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tag);
        if !removed {
            return;
        }
        match &self.acks {
            #[cfg(feature = "redis")]
            Outbox::Redis(b) => {
                b.push(key, payload);
                b.ack(tag.to_owned());
            }
            #[cfg(feature = "amqp")]
            Outbox::Amqp(o) => o.reject(tag.to_owned()),
        }
    }

    pub(crate) fn store(
        &self,
        msg: &TaskMessage,
        state: TaskState,
        result: Value,
        traceback: Option<String>,
    ) {
        let Some(backend) = &self.backend else { return };
        backend.store(
            &self.meta(msg, state, result, traceback),
            msg.properties.reply_to.as_deref(),
        );
    }

    /// The meta of `msg` in `state`; with `result_extended`, the request
    /// details too (args and kwargs from `msg`, so callers that moved them
    /// out put them back first).
    pub(crate) fn meta(
        &self,
        msg: &TaskMessage,
        state: TaskState,
        result: Value,
        traceback: Option<String>,
    ) -> ResultMeta {
        let mut meta = ResultMeta::new(&msg.headers.id, state, result);
        meta.traceback = traceback;
        meta.group_id = msg.headers.group.clone();
        meta.parent_id = msg.headers.parent_id.clone();
        if self.config.result_extended {
            meta.name = Some(msg.headers.task.clone());
            meta.args = Some(msg.args.clone());
            meta.kwargs = Some(msg.kwargs.clone());
            meta.worker = Some(self.config.hostname.clone());
            meta.retries = Some(msg.headers.retries);
            meta.queue = Some(msg.properties.delivery_info.routing_key.clone());
        }
        meta
    }
}

impl Worker {
    /// A worker with `config` running the tasks in `registry`.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Config`] for unusable settings.
    pub fn new(config: WorkerConfig, registry: TaskRegistry) -> Result<Self, WorkerError> {
        config.validate()?;
        Ok(Worker {
            config,
            registry: Arc::new(registry),
            shutdown: ShutdownHandle {
                warm: CancellationToken::new(),
                cold: CancellationToken::new(),
            },
            stats: Arc::new(RedisStats::default()),
            ready: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(WorkerMetrics::new()),
        })
    }

    /// A handle that stops the worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Counters of the worker's Redis traffic.
    pub fn stats(&self) -> Arc<RedisStats> {
        Arc::clone(&self.stats)
    }

    /// The worker's Prometheus metrics: task counters by name, run
    /// times, pool gauges and reconnects. Served on `GET /metrics` when
    /// [`WorkerConfig::metrics`] is set; [`WorkerMetrics::render`] gives
    /// the same text to programs that serve it themselves.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Notified once the worker is connected and consuming.
    pub fn ready(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.ready)
    }

    /// Runs until shut down.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Broker`] when Redis cannot be reached at start (after
    /// the retries `broker_connection_retry_on_startup` allows), or when a
    /// lost connection could not be restored within
    /// `broker_connection_max_retries` attempts: the worker then stops as
    /// in a warm shutdown, without the writes it could not make, and
    /// returns the error so that its supervisor restarts it.
    /// [`WorkerError::Pool`] if the pool does not start.
    /// [`WorkerError::Metrics`] if [`WorkerConfig::metrics`] cannot be
    /// bound.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future leaves fetched messages in the
    /// `unacked` hash until a visibility-timeout sweep returns them. Stop it
    /// with its [`ShutdownHandle`] instead.
    pub async fn run(self) -> Result<WorkerReport, WorkerError> {
        let transport = crate::broker::Transport::of(&self.config.broker_url)?;
        let stop_metrics = CancellationToken::new();
        let serving = match self.config.metrics {
            Some(addr) => {
                let server = MetricsServer::bind(addr).await?;
                tracing::info!("Metrics on http://{}/metrics", server.local_addr());
                Some(server.spawn(Arc::clone(&self.metrics), stop_metrics.clone()))
            }
            None => None,
        };
        let ran = match transport {
            #[cfg(feature = "redis")]
            crate::broker::Transport::Redis => {
                crate::broker::redis::consumer::run(
                    self.config,
                    self.registry,
                    self.shutdown,
                    self.ready,
                    self.stats,
                    self.metrics,
                )
                .await
            }
            #[cfg(feature = "amqp")]
            crate::broker::Transport::Amqp => {
                crate::broker::amqp::consumer::run(
                    self.config,
                    self.registry,
                    self.shutdown,
                    self.ready,
                    self.stats,
                    self.metrics,
                )
                .await
            }
        };
        stop_metrics.cancel();
        if let Some(serving) = serving {
            let _ = serving.await;
        }
        ran
    }
}

/// Logs a message over the size limit (already removed inside Redis, or
/// acked after this on AMQP) and stores FAILURE for it when its task id
/// was found; `reply_to` is where an rpc:// result goes.
pub(crate) fn refuse_oversized(shared: &Shared, big: Oversized, reply_to: Option<&str>) {
    bump(&shared.counters.received);
    bump(&shared.counters.failed);
    let limit = shared.config.limits.max_message_size;
    let id = big.id.as_deref().unwrap_or("unknown id");
    tracing::error!(
        "Refused a message of {} bytes from queue {:?} (task {id}): over the limit of {limit} \
         bytes (max_message_size); it was removed from the queue unread",
        big.size,
        big.queue
    );
    if let (Some(id), Some(backend)) = (&big.id, &shared.backend) {
        let err = TaskError::new(
            "MessageTooLarge",
            format!(
                "message of {} bytes is over the worker's limit of {limit} bytes",
                big.size
            ),
        )
        .with_module("greenpool");
        backend.store(
            &ResultMeta::new(id, TaskState::Failure, err.to_json()),
            reply_to,
        );
    }
}
