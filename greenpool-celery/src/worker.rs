//! The worker: consume, run each request as a job in a greenpool
//! [`TaskPool`], ack, store the outcome.
//!
//! # A message's path
//!
//! 1. The consumer takes up to the free prefetch budget (concurrency ×
//!    multiplier unacked messages) in one fetch; each message is in the
//!    `unacked` hash from then on.
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
use std::time::Duration;

use greenpool::{TaskPool, Timer};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{RedisBackend, ResultMeta, TaskState};
use crate::batch::{Batcher, Targets};
use crate::broker::{ActiveQueues, Oversized, RedisBroker};
use crate::config::WorkerConfig;
use crate::conn::{Link, LinkSettings};
use crate::error::{BrokerError, WorkerError};
use crate::metrics::http::MetricsServer;
use crate::metrics::WorkerMetrics;
use crate::outbox::{Outbox, ResultStore};
use crate::protocol::TaskMessage;
use crate::registry::TaskRegistry;
use crate::scripts::Scripts;
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

/// A Celery worker on kombu's Redis transport.
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
}

pub(crate) fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Shared {
    pub(crate) fn ack(&self, tag: &str) {
        let removed = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tag);
        if removed {
            self.acks.ack(tag.to_owned());
        }
    }

    /// Puts a delivered message back on its queue (a requeueing
    /// reject): `payload` pushed on `key` and the delivery acked, in that
    /// order, on Redis (one atomic batch); `basic.reject` with requeue on
    /// AMQP.
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
            crate::broker::Transport::Redis => self.run_redis().await,
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

    async fn run_redis(self) -> Result<WorkerReport, WorkerError> {
        let config = self.config.clone();
        let settings = LinkSettings::from_config(&config);
        let broker_link = Arc::new(
            Link::open(
                "broker",
                &config.broker_url,
                settings.clone(),
                Some(Scripts::hook()),
            )
            .await?,
        );
        broker_link.count_reconnects(self.metrics.reconnects.counter("broker"));
        let queues = Arc::new(ActiveQueues::new(&config.queues));
        let broker = Arc::new(
            RedisBroker::new(
                Arc::clone(&broker_link),
                config.hostname.clone(),
                Arc::clone(&queues),
                config.legacy_fetch,
                config.max_message_size,
                Arc::clone(&self.stats),
            )
            .await?,
        );
        broker.declare().await?;
        broker.register().await?;
        let backend_link = match &config.result_backend {
            Some(url) if *url != config.broker_url => {
                let link =
                    Link::open("result backend", url, settings, Some(Scripts::hook())).await?;
                link.count_reconnects(self.metrics.reconnects.counter("result backend"));
                Some(Arc::new(link))
            }
            _ => None,
        };
        let acks = Arc::new(Batcher::spawn(
            Targets {
                broker: broker_link,
                backend: backend_link,
                scripts: broker.scripts().clone(),
                result_expires: config.result_expires.map_or(0, |d| d.as_secs()),
            },
            Arc::clone(&self.stats),
        ));
        let backend = config
            .result_backend
            .as_ref()
            .map(|_| ResultStore::Redis(RedisBackend::with_batcher(Arc::clone(&acks))));
        let pool = TaskPool::builder()
            .limit(i64::try_from(config.initial_pool_limit()).unwrap_or(i64::MAX))
            .build()
            .map_err(|e| WorkerError::Pool(e.to_string()))?;
        pool.start().map_err(|e| WorkerError::Pool(e.to_string()))?;
        let control = crate::control::Node::connect(
            &config,
            Arc::clone(&self.registry),
            pool.clone(),
            backend.as_ref().and_then(ResultStore::redis).cloned(),
            self.shutdown.warm.clone(),
            queues,
            Arc::clone(&self.metrics),
        )
        .await?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            registry: Arc::clone(&self.registry),
            pool: pool.clone(),
            acks: Outbox::Redis(Arc::clone(&acks)),
            backend: backend.clone(),
            outstanding: Mutex::new(HashSet::new()),
            warm: self.shutdown.warm.clone(),
            counters: Counters::default(),
            timer: TaskPool::new_timer(),
            control: Arc::clone(&control),
        });
        tracing::info!(
            "Connected to {}; {} ready (concurrency {}, prefetch {}, queues {})",
            config.broker_url,
            config.hostname,
            config.concurrency,
            config.prefetch_count(),
            config.queues.join(",")
        );
        let sweeper = tokio::spawn(sweep(
            Arc::clone(&broker),
            config.visibility_timeout,
            config.restore_interval,
            self.shutdown.warm.clone(),
        ));
        let liveness = tokio::spawn(keep_alive(Arc::clone(&broker), self.shutdown.warm.clone()));
        // Refuse waiting requests the moment warm shutdown starts, even
        // while the consumer still waits for a fetch.
        let closer = {
            let pool = pool.clone();
            let warm = self.shutdown.warm.clone();
            tokio::spawn(async move {
                warm.cancelled().await;
                tracing::warn!("worker: warm shutdown");
                pool.close();
            })
        };
        let service = crate::control::Service::start(&control).await;
        self.ready.notify_waiters();
        let handlers = TaskTracker::new();
        let consumed = consume(&broker, &shared, &handlers, &self.shutdown).await;
        if consumed.is_err() {
            // The broker is gone for good: stop as a warm shutdown would,
            // then report the error so that a supervisor restarts us.
            self.shutdown.warm.cancel();
        }

        // Warm shutdown: refuse waiting requests, finish running jobs.
        let _ = closer.await;
        handlers.close();
        tokio::select! {
            _ = handlers.wait() => {}
            _ = self.shutdown.cold.cancelled() => {}
        }
        tokio::select! {
            r = pool.stop() => { let _ = r; }
            _ = self.shutdown.cold.cancelled() => {
                tracing::warn!("worker: cold shutdown");
                let _ = pool.terminate().await;
            }
        }
        handlers.wait().await;
        shared.timer.stop();
        service.stop().await;
        let _ = sweeper.await;
        let _ = liveness.await;
        // A cold shutdown still writes what it holds, but gives Redis at most
        // the command timeout from then on.
        let grace = config.command_timeout;
        let cold = self.shutdown.cold.clone();
        let cold_deadline = || {
            let cold = cold.clone();
            async move {
                cold.cancelled().await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::select! {
            _ = acks.flush() => {}
            _ = cold_deadline() => {
                tracing::warn!("worker: cold shutdown; results and acks still held are not written");
            }
        }
        // Give back whatever is still unacked: prefetched, ETA, or killed
        // late-ack requests.
        let left: Vec<String> = shared
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        let mut restored = 0u64;
        let gone = consumed.is_err() || acks.failure().is_some();
        for tag in left.iter().filter(|_| !gone) {
            let r = tokio::select! {
                r = broker.restore(tag, false) => r,
                _ = cold_deadline() => break,
            };
            match r {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!("cannot restore message {tag}: {e}");
                    break;
                }
            }
        }
        if restored > 0 {
            tracing::warn!("Restoring {restored} unacknowledged message(s)");
        }
        if !gone {
            // No fetch runs any more: forget this worker's in-flight lists
            // (empty unless the last record failed; then they go back).
            tokio::select! {
                r = broker.unregister() => if let Err(e) = r {
                    tracing::warn!("cannot unregister the worker's in-flight lists: {e}");
                },
                _ = cold_deadline() => {}
            }
        }
        tokio::select! {
            _ = acks.close() => {}
            _ = cold_deadline() => {}
        }
        consumed?;
        if let Some(e) = acks.failure() {
            return Err(WorkerError::Broker(e));
        }
        let c = &shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Ok(WorkerReport {
            received: load(&c.received),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            revoked: load(&c.revoked),
            retried: load(&c.retried),
            restored,
        })
    }
}

/// The restore sweep, at start and then every `interval`.
async fn sweep(
    broker: Arc<RedisBroker>,
    visibility_timeout: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        match broker
            .restore_visible(visibility_timeout.as_secs_f64())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "Restored {n} message(s) unacked for longer than the visibility timeout"
            ),
            Err(e) => tracing::warn!("restore sweep failed: {e}"),
        }
        if let Err(e) = broker.return_dead().await {
            tracing::warn!("cannot return the in-flight messages of dead workers: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Refreshes the worker's liveness key until warm shutdown.
async fn keep_alive(broker: Arc<RedisBroker>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::broker::LIVENESS_REFRESH) => {}
            _ = stop.cancelled() => return,
        }
        // A lost connection is logged by the link; the next refresh tries
        // again, well within the key's lifetime.
        if let Err(e) = broker.refresh_liveness().await {
            tracing::debug!("cannot refresh the liveness key: {e}");
        }
    }
}

/// Longest sleep between fetches while every queue is empty.
const IDLE_POLL_MAX: Duration = Duration::from_millis(100);

/// The consumer loop: fetch within the prefetch budget, hand each message
/// to a handler, until warm shutdown. Returns an error when the broker
/// link (or the batcher's) gave up.
async fn consume(
    broker: &RedisBroker,
    shared: &Arc<Shared>,
    handlers: &TaskTracker,
    shutdown: &ShutdownHandle,
) -> Result<(), BrokerError> {
    let prefetch = shared.control.prefetch.semaphore();
    let mut idle = Duration::ZERO;
    let mut failures: u32 = 0;
    loop {
        let first = tokio::select! {
            p = Arc::clone(&prefetch).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            _ = shutdown.warm.cancelled() => return Ok(()),
            _ = shared.acks.gave_up() => return Err(shared.acks.failure().unwrap_or_else(
                || BrokerError::GaveUp("the batcher stopped".to_owned()))),
        };
        if shutdown.warm.is_cancelled() {
            return Ok(());
        }
        let budget = 1 + prefetch
            .available_permits()
            .min(shared.config.fetch_batch.saturating_sub(1));
        let stamp = RedisBroker::stamp();
        let fetched = match broker.fetch(budget, stamp).await {
            Ok(f) => f,
            Err(e) => {
                drop(first);
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::error!("consumer: cannot fetch: {e}");
                }
                tokio::select! {
                    r = broker.link().recover() => r?,
                    _ = shutdown.warm.cancelled() => return Ok(()),
                }
                // Whatever step 1 moved before its reply was lost stays
                // in this worker's in-flight lists: the next fetch reads
                // and records it first.
                // A busy server (loading after a restart, say) answers at
                // once: do not spin on it.
                let pause = broker
                    .link()
                    .settings()
                    .backoff
                    .delay(failures)
                    .min(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.warm.cancelled() => return Ok(()),
                }
            }
        };
        if failures > 0 {
            tracing::warn!("consumer: fetching again after {failures} failed attempt(s)");
            failures = 0;
        }
        if fetched.is_empty() {
            drop(first);
            idle = (idle * 2).clamp(Duration::from_millis(1), IDLE_POLL_MAX);
            tokio::select! {
                _ = tokio::time::sleep(idle) => continue,
                _ = shutdown.warm.cancelled() => return Ok(()),
            }
        }
        idle = Duration::ZERO;
        for big in fetched.oversized {
            refuse_oversized(shared, big, None);
        }
        dispatch(shared, handlers, &prefetch, Some(first), fetched.deliveries);
    }
}

/// Hands each delivery to a handler with a prefetch permit when one is
/// free.
fn dispatch(
    shared: &Arc<Shared>,
    handlers: &TaskTracker,
    prefetch: &Arc<Semaphore>,
    first: Option<tokio::sync::OwnedSemaphorePermit>,
    deliveries: Vec<crate::broker::Delivery>,
) {
    let mut first = first;
    for d in deliveries {
        let permit = first
            .take()
            .or_else(|| Arc::clone(prefetch).try_acquire_owned().ok());
        let shared = Arc::clone(shared);
        handlers.spawn(crate::request::handle(shared, d, permit));
    }
}

/// Logs a message over the size limit (already removed inside Redis, or
/// acked after this on AMQP) and stores FAILURE for it when its task id
/// was found; `reply_to` is where an rpc:// result goes.
pub(crate) fn refuse_oversized(shared: &Shared, big: Oversized, reply_to: Option<&str>) {
    bump(&shared.counters.received);
    bump(&shared.counters.failed);
    let limit = shared.config.max_message_size;
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
