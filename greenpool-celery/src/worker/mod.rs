//! The worker: consume, run each request as a job in a greenpool
//! [`TaskPool`], ack, store the outcome.
//!
//! # Layout
//!
//! * this file: [`Worker`], [`ShutdownHandle`], [`WorkerReport`];
//! * `lifecycle.rs`: set-up, the consume loop and the stopping sequence,
//!   once for every transport (generic over the transport trait of
//!   `broker/transport.rs`);
//! * `state.rs`: `Shared`, the state the request path works on: the
//!   control node (`control/node.rs`, the one home of the settings,
//!   registry, pool, result store, node name and warm shutdown), the
//!   writer, the unacked deliveries and the ETA timer.
//!
//! # Where counts are made
//!
//! Nowhere in `worker/` or `request/` directly: each fact about a request
//! (delivered, failed before it could run, received, started, settled
//! with its counter and event, rejected) is handed to the node's recorder
//! (`control/recorder.rs`), which moves every count at once: the
//! [`WorkerReport`]'s counters, `processed` and `stats.total`, the
//! Prometheus task metrics and the task event. So the report,
//! `inspect stats`, `/metrics` and `celery events` agree.
//!
//! The transports never import `worker/`. The request path
//! (`crate::request`) imports `state.rs`, and `lifecycle.rs` calls the
//! request path: that is the one edge pair between them.
//!
//! # A message's path
//!
//! 1. The transport (`broker/redis/consumer.rs` or
//!    `broker/amqp/consumer.rs`) takes messages within the prefetch window
//!    (concurrency × multiplier unacked messages): on Redis in one fetch,
//!    each message in the `unacked` hash from then on; on AMQP as the
//!    broker delivers them under `basic.qos`. The lifecycle's consume loop
//!    hands each to a request handler (`crate::request::handle`).
//! 2. The handler decodes it. A message that cannot run (unreadable,
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

mod lifecycle;
mod state;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

#[cfg(feature = "amqp")]
use crate::broker::amqp::consumer::AmqpTransport;
#[cfg(feature = "redis")]
use crate::broker::redis::consumer::RedisTransport;
use crate::broker::Transport;
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::metrics::http::MetricsServer;
use crate::metrics::WorkerMetrics;
use crate::registry::TaskRegistry;
use crate::stats::BrokerStats;

pub(crate) use self::state::Shared;

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
/// `broker/amqp/`, this type, its lifecycle and the request path are
/// shared).
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
    stats: Arc<BrokerStats>,
    ready: Arc<tokio::sync::Notify>,
    metrics: Arc<WorkerMetrics>,
}

impl Worker {
    /// A worker with `config` running the tasks in `registry`.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Config`] for unusable settings.
    pub fn new(config: WorkerConfig, mut registry: TaskRegistry) -> Result<Self, WorkerError> {
        config.validate()?;
        // Celery's built-in tasks, under the names the user left free.
        let late = crate::canvas::builtins::Late::default();
        crate::canvas::builtins::install(&mut registry, &late);
        let registry = Arc::new(registry);
        let _ = late.set(Arc::downgrade(&registry));
        Ok(Worker {
            config,
            registry,
            shutdown: ShutdownHandle {
                warm: CancellationToken::new(),
                cold: CancellationToken::new(),
            },
            stats: Arc::new(BrokerStats::default()),
            ready: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(WorkerMetrics::new()),
        })
    }

    /// A handle that stops the worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Counters of the worker's broker traffic (Redis or AMQP).
    pub fn stats(&self) -> Arc<BrokerStats> {
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
        let transport = Transport::of(&self.config.broker_url)?;
        let stop_metrics = CancellationToken::new();
        let serving = match self.config.metrics {
            Some(addr) => {
                let server = MetricsServer::bind(addr).await?;
                tracing::info!("Metrics on http://{}/metrics", server.local_addr());
                Some(server.spawn(Arc::clone(&self.metrics), stop_metrics.clone()))
            }
            None => None,
        };
        let start = lifecycle::Start {
            config: self.config,
            registry: self.registry,
            shutdown: self.shutdown,
            ready: self.ready,
            stats: self.stats,
            metrics: self.metrics,
        };
        let ran = match transport {
            #[cfg(feature = "redis")]
            Transport::Redis => lifecycle::run::<RedisTransport>(start).await,
            #[cfg(feature = "amqp")]
            Transport::Amqp => lifecycle::run::<AmqpTransport>(start).await,
        };
        stop_metrics.cancel();
        if let Some(serving) = serving {
            let _ = serving.await;
        }
        ran
    }
}
