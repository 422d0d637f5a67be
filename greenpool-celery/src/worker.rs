//! The worker: consume, run each request as a job in a greenpool
//! [`TaskPool`], ack, store the outcome.
//!
//! # A message's path
//!
//! 1. The consumer takes up to the free prefetch budget (concurrency ×
//!    multiplier unacked messages) in one fetch; each message is in the
//!    `unacked` hash from then on.
//! 2. Its handler decodes it. Unreadable messages and unknown task names
//!    are logged and dropped (an unknown name also stores FAILURE
//!    `NotRegistered`, as Celery does); an expired one stores REVOKED.
//! 3. A message with a future ETA waits on the pool's green
//!    [`Timer`](greenpool::Timer), still unacked and no longer counted
//!    against the prefetch budget.
//! 4. It is applied to the pool, waiting for a slot. When the job first
//!    runs it is acked (early ack), unless the task acks late.
//! 5. When the job ends, its result callback stores SUCCESS or FAILURE
//!    and, for late acks, acks. Acks and results of many jobs leave in one
//!    pipelined round trip.
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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{RedisBackend, ResultMeta, TaskState};
use crate::batch::Batcher;
use crate::broker::RedisBroker;
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::protocol::TaskMessage;
use crate::registry::TaskRegistry;
use crate::stats::RedisStats;

/// Stops a running worker: warm first, cold if asked again.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    warm: CancellationToken,
    cold: CancellationToken,
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
    pub(crate) acks: Arc<Batcher>,
    pub(crate) backend: Option<RedisBackend>,
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

    pub(crate) fn store(
        &self,
        msg: &TaskMessage,
        state: TaskState,
        result: Value,
        traceback: Option<String>,
    ) {
        let Some(backend) = &self.backend else { return };
        backend.store(&self.meta(msg, state, result, traceback));
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

    /// Notified once the worker is connected and consuming.
    pub fn ready(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.ready)
    }

    /// Runs until shut down.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Broker`] when Redis cannot be reached at start;
    /// [`WorkerError::Pool`] if the pool does not start. Later Redis
    /// errors are logged and retried.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future leaves fetched messages in the
    /// `unacked` hash until a visibility-timeout sweep returns them. Stop it
    /// with its [`ShutdownHandle`] instead.
    pub async fn run(self) -> Result<WorkerReport, WorkerError> {
        let config = self.config.clone();
        let broker = Arc::new(
            RedisBroker::connect(
                &config.broker_url,
                config.queues.clone(),
                config.legacy_fetch,
                Arc::clone(&self.stats),
            )
            .await?,
        );
        broker.declare().await?;
        let acks = Arc::new(Batcher::spawn(
            broker.connection(),
            broker.scripts().clone(),
            config.result_expires.map_or(0, |d| d.as_secs()),
            Arc::clone(&self.stats),
        ));
        let backend = match &config.result_backend {
            None => None,
            Some(url) if *url == config.broker_url => {
                Some(RedisBackend::with_batcher(Arc::clone(&acks)))
            }
            Some(url) => Some(
                RedisBackend::connect(url, config.result_expires, Arc::clone(&self.stats)).await?,
            ),
        };
        let pool = TaskPool::builder()
            .limit(i64::try_from(config.initial_pool_limit()).unwrap_or(i64::MAX))
            .build()
            .map_err(|e| WorkerError::Pool(e.to_string()))?;
        pool.start().map_err(|e| WorkerError::Pool(e.to_string()))?;
        let control = crate::control::Node::connect(
            &config,
            Arc::clone(&self.registry),
            pool.clone(),
            backend.clone(),
            self.shutdown.warm.clone(),
        )
        .await?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            registry: Arc::clone(&self.registry),
            pool: pool.clone(),
            acks: Arc::clone(&acks),
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
        // Refuse waiting requests the moment warm shutdown starts, even
        // while the consumer still sits in BRPOP.
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
        consume(&broker, &shared, &handlers, &self.shutdown).await;

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
        acks.flush().await;
        // Give back whatever is still unacked: prefetched, ETA, or killed
        // late-ack requests.
        let left: Vec<String> = shared
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        let mut restored = 0u64;
        for tag in &left {
            match broker.restore(tag, false).await {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(e) => tracing::error!("cannot restore message {tag}: {e}"),
            }
        }
        if restored > 0 {
            tracing::warn!("Restoring {restored} unacknowledged message(s)");
        }
        acks.close().await;
        if let Some(b) = &backend {
            b.close().await;
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
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The consumer loop: fetch within the prefetch budget, hand each message
/// to a handler, until warm shutdown.
async fn consume(
    broker: &RedisBroker,
    shared: &Arc<Shared>,
    handlers: &TaskTracker,
    shutdown: &ShutdownHandle,
) {
    let prefetch = shared.control.prefetch.semaphore();
    loop {
        let first = tokio::select! {
            p = Arc::clone(&prefetch).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.warm.cancelled() => return,
        };
        if shutdown.warm.is_cancelled() {
            return;
        }
        let budget = 1 + prefetch
            .available_permits()
            .min(shared.config.fetch_batch.saturating_sub(1));
        let mut deliveries = match broker.fetch(budget).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("consumer: cannot fetch: {e}; retrying in 1 s");
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.warm.cancelled() => return,
                }
            }
        };
        if deliveries.is_empty() {
            // Every queue is empty: sleep in BRPOP, as kombu does. Not
            // cancelled on shutdown, so a popped message is never dropped.
            match broker.wait(budget, 1).await {
                Ok(d) => deliveries = d,
                Err(e) => {
                    tracing::error!("consumer: BRPOP failed: {e}; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.warm.cancelled() => {}
                    }
                }
            }
        }
        let mut first = Some(first);
        for d in deliveries {
            let permit = first
                .take()
                .or_else(|| Arc::clone(&prefetch).try_acquire_owned().ok());
            let shared = Arc::clone(shared);
            handlers.spawn(crate::request::handle(shared, d, permit));
        }
    }
}
