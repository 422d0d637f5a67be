//! A worker's life on any transport, written once: set up, consume, stop.
//!
//! 1. Set-up: the transport connects (its writer and result store with
//!    it), then the pool, the control node (which holds the settings,
//!    registry, pool, result store and recorder from then on), the shared
//!    state, the control service; then the worker is ready.
//! 2. Consume: each round of deliveries the transport's
//!    [`next`](WorkerTransport::next) hands out goes to
//!    [`request::handle`](crate::request::handle), one handler each, with
//!    the prefetch permits the transport took; messages refused for their
//!    size get their FAILURE here.
//! 3. Stop: the pool is closed the moment warm shutdown starts (waiting
//!    requests are refused); handlers and running tasks finish (cold
//!    shutdown kills them); the transport flushes its writes; what is
//!    still unacked is given back; the transport closes. From cold
//!    shutdown on, each of these writes gets the command timeout at most.
//!
//! The transports (`broker/redis/consumer.rs`, `broker/amqp/consumer.rs`)
//! never import `worker/`: this file imports them.

use std::sync::Arc;

use greenpool::TaskPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::state::Shared;
use super::{ShutdownHandle, WorkerReport};
use crate::backend::{ResultMeta, TaskState};
use crate::broker::transport::{Connect, Feed, Refused, Taken, WorkerTransport};
use crate::broker::ActiveQueues;
use crate::config::WorkerConfig;
use crate::control::{Node, NodeParts, Service};
use crate::error::{BrokerError, WorkerError};
use crate::metrics::WorkerMetrics;
use crate::registry::TaskRegistry;
use crate::stats::BrokerStats;
use crate::task_error::TaskError;

/// What the lifecycle is started with (the [`Worker`](super::Worker)'s
/// parts).
#[derive(Debug)]
pub(crate) struct Start {
    /// The worker's settings.
    pub(crate) config: WorkerConfig,
    /// The tasks it runs.
    pub(crate) registry: Arc<TaskRegistry>,
    /// Warm and cold shutdown.
    pub(crate) shutdown: ShutdownHandle,
    /// Notified once the worker consumes.
    pub(crate) ready: Arc<Notify>,
    /// The broker traffic counters.
    pub(crate) stats: Arc<BrokerStats>,
    /// The Prometheus metrics.
    pub(crate) metrics: Arc<WorkerMetrics>,
}

/// The report of a worker stopped while it still waited for its broker.
fn stopped_before_ready() -> WorkerReport {
    tracing::warn!("worker: stopped before it reached its broker; nothing was taken");
    WorkerReport::default()
}

/// Runs a worker on transport `T` until shut down.
pub(crate) async fn run<T: WorkerTransport>(start: Start) -> Result<WorkerReport, WorkerError> {
    let Start {
        config,
        registry,
        shutdown,
        ready,
        stats,
        metrics,
    } = start;
    let queues = Arc::new(ActiveQueues::new(&config.queues));
    // A shutdown asked for while the broker cannot be reached yet (the
    // startup retries) stops the worker there: nothing was taken.
    let connect = T::connect(Connect {
        config: &config,
        queues: &queues,
        stats: &stats,
        metrics: &metrics,
        warm: &shutdown.warm,
    });
    let Some(transport) = shutdown.warm.run_until_cancelled(connect).await else {
        return Ok(stopped_before_ready());
    };
    let mut transport = transport?;
    let backend = transport.results();
    let pool = TaskPool::builder()
        .limit(i64::try_from(config.initial_pool_limit()).unwrap_or(i64::MAX))
        .build()
        .map_err(|e| WorkerError::Pool(e.to_string()))?;
    pool.start().map_err(|e| WorkerError::Pool(e.to_string()))?;
    let control = Node::connect(NodeParts {
        config,
        registry,
        pool: pool.clone(),
        backend,
        shutdown: shutdown.warm.clone(),
        queues,
        metrics,
    });
    let Some(control) = shutdown.warm.run_until_cancelled(control).await else {
        return Ok(stopped_before_ready());
    };
    let control = control?;
    let shared = Shared::new(Arc::clone(&control), transport.outbox());
    let config = &control.config;
    tracing::info!(
        "Connected to {}; {} ready (concurrency {}, prefetch {}, queues {})",
        transport.label(),
        config.hostname,
        config.concurrency,
        config.prefetch_count(),
        config.queues.join(",")
    );
    // Refuse waiting requests the moment warm shutdown starts, even
    // while the consumer still waits for its broker.
    let closer = close_at_warm_shutdown(&pool, &shutdown);
    let service = Service::start(&control).await;
    ready.notify_waiters();
    let handlers = TaskTracker::new();
    let consumed = consume(&mut transport, &shared, &handlers, &shutdown).await;
    if consumed.is_err() {
        // The broker is gone for good: stop as a warm shutdown would,
        // then report the error so that a supervisor restarts us.
        shutdown.warm.cancel();
    }
    finish_tasks(closer, &handlers, &pool, &shutdown, &shared, service).await;
    let (restored, failure) = give_back(transport, &shared, &shutdown, consumed.is_err()).await;
    consumed?;
    if let Some(e) = failure {
        return Err(WorkerError::Broker(e));
    }
    Ok(control.recorder.report(restored))
}

/// The consume loop: every round the transport takes goes to the request
/// handlers, until warm shutdown (`Ok`) or until the broker is gone for
/// good (`Err`).
async fn consume<T: WorkerTransport>(
    transport: &mut T,
    shared: &Arc<Shared>,
    handlers: &TaskTracker,
    shutdown: &ShutdownHandle,
) -> Result<(), BrokerError> {
    let feed = Feed {
        node: &shared.control,
        warm: &shutdown.warm,
    };
    while let Some(taken) = transport.next(feed).await? {
        dispatch(shared, handlers, taken);
    }
    Ok(())
}

/// Refuses the oversized messages of a round, then hands each delivery to
/// a handler, with a prefetch permit when the transport counts the window
/// (the first one's taken already, the others' when one is free).
fn dispatch(shared: &Arc<Shared>, handlers: &TaskTracker, taken: Taken) {
    let Taken {
        deliveries,
        refused,
        permits,
    } = taken;
    for r in refused {
        refuse_oversized(shared, r);
    }
    let (mut first, window) = match permits {
        Some(p) => (Some(p.first), Some(p.window)),
        None => (None, None),
    };
    for d in deliveries {
        let permit = first.take().or_else(|| {
            window
                .as_ref()
                .and_then(|w| Arc::clone(w).try_acquire_owned().ok())
        });
        handlers.spawn(crate::request::handle(Arc::clone(shared), d, permit));
    }
}

/// Logs a message over the size limit (already removed inside Redis, or
/// acked after this on AMQP) and stores FAILURE for it when its task id
/// was found.
fn refuse_oversized(shared: &Shared, refused: Refused) {
    let Refused {
        oversized: big,
        reply_to,
        ack,
    } = refused;
    let node = &shared.control;
    node.recorder.delivered();
    node.recorder.unrunnable();
    let limit = node.config.limits.max_message_size;
    let id = big.id.as_deref().unwrap_or("unknown id");
    tracing::error!(
        "Refused a message of {} bytes from queue {:?} (task {id}): over the limit of {limit} \
         bytes (max_message_size); it was removed from the queue unread",
        big.size,
        big.queue
    );
    if let (Some(id), Some(backend)) = (&big.id, &node.backend) {
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
            reply_to.as_deref(),
        );
    }
    // FAILURE first, then the ack: the writer sends acks only after what
    // was queued before them.
    if let Some(tag) = ack {
        shared.acks.ack(tag);
    }
}

/// Closes `pool` the moment warm shutdown starts, even while the consumer
/// still waits on its broker: requests waiting for a slot are refused.
fn close_at_warm_shutdown(pool: &TaskPool, shutdown: &ShutdownHandle) -> JoinHandle<()> {
    let pool = pool.clone();
    let warm = shutdown.warm.clone();
    tokio::spawn(async move {
        warm.cancelled().await;
        tracing::warn!("worker: warm shutdown");
        pool.close();
    })
}

/// Once the consumer stopped: waits for the request handlers and the
/// running tasks (a cold shutdown cuts both short and kills the tasks),
/// then stops the timer and the remote control.
async fn finish_tasks(
    closer: JoinHandle<()>,
    handlers: &TaskTracker,
    pool: &TaskPool,
    shutdown: &ShutdownHandle,
    shared: &Shared,
    service: Service,
) {
    let _ = closer.await;
    handlers.close();
    tokio::select! {
        _ = handlers.wait() => {}
        _ = shutdown.cold.cancelled() => {}
    }
    tokio::select! {
        r = pool.stop() => { let _ = r; }
        _ = shutdown.cold.cancelled() => {
            tracing::warn!("worker: cold shutdown");
            let _ = pool.terminate().await;
        }
    }
    handlers.wait().await;
    shared.timer.stop();
    service.stop().await;
}

/// Once the tasks ended: flushes the transport's writes, gives back what
/// is still unacked (prefetched, waiting for an ETA, or killed late-ack
/// requests) unless the broker is gone (`lost`, or the writer gave up),
/// and closes the transport. Returns how many messages went back, and
/// why the writer gave up if it did.
///
/// A cold shutdown still writes what it holds, but gives the broker at
/// most the command timeout from then on.
async fn give_back<T: WorkerTransport>(
    mut transport: T,
    shared: &Shared,
    shutdown: &ShutdownHandle,
    lost: bool,
) -> (u64, Option<BrokerError>) {
    let grace = shared.control.config.connection.command_timeout;
    let cold = shutdown.cold.clone();
    let cold_deadline = || {
        let cold = cold.clone();
        async move {
            cold.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        _ = transport.flush() => {}
        _ = cold_deadline() => {
            tracing::warn!("worker: cold shutdown; results and acks still held are not written");
        }
    }
    let left = shared.take_outstanding();
    let gone = lost || transport.failure().is_some();
    let mut restored = 0u64;
    for tag in left.into_iter().filter(|_| !gone) {
        let r = tokio::select! {
            r = transport.give_back(tag.clone()) => r,
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
    let failure = transport.failure();
    tokio::select! {
        _ = transport.close(gone) => {}
        _ = cold_deadline() => {}
    }
    (restored, failure)
}
