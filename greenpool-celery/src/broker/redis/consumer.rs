//! The worker on kombu's Redis transport: fetch within the prefetch
//! window (the two-step fetch of [`super`]), hand each message to the
//! shared request path, sweep the visibility timeout, keep the worker's
//! liveness key fresh, and give back what is left at shutdown.

use std::sync::Arc;
use std::time::Duration;

use greenpool::TaskPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch::{Batcher, Targets};
use super::scripts::Scripts;
use super::RedisBroker;
use crate::backend::RedisBackend;
use crate::broker::ActiveQueues;
use crate::config::WorkerConfig;
use crate::conn::{Link, LinkSettings};
use crate::error::{BrokerError, WorkerError};
use crate::metrics::WorkerMetrics;
use crate::outbox::{Outbox, ResultStore};
use crate::registry::TaskRegistry;
use crate::stats::RedisStats;
use crate::worker::{refuse_oversized, Shared, ShutdownHandle, WorkerReport};

/// Runs a worker on the Redis broker of `config` until shut down.
pub(crate) async fn run(
    config: WorkerConfig,
    registry: Arc<TaskRegistry>,
    shutdown: ShutdownHandle,
    ready: Arc<tokio::sync::Notify>,
    stats: Arc<RedisStats>,
    metrics: Arc<WorkerMetrics>,
) -> Result<WorkerReport, WorkerError> {
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
    broker_link.count_reconnects(metrics.reconnects.counter("broker"));
    let queues = Arc::new(ActiveQueues::new(&config.queues));
    let broker = Arc::new(
        RedisBroker::new(
            Arc::clone(&broker_link),
            config.hostname.clone(),
            Arc::clone(&queues),
            config.redis.legacy_fetch,
            config.limits.max_message_size,
            Arc::clone(&stats),
        )
        .await?,
    );
    broker.declare().await?;
    broker.register().await?;
    let backend_link = match &config.result_backend {
        Some(url) if *url != config.broker_url => {
            let link = Link::open("result backend", url, settings, Some(Scripts::hook())).await?;
            link.count_reconnects(metrics.reconnects.counter("result backend"));
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
        Arc::clone(&stats),
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
        Arc::clone(&registry),
        pool.clone(),
        backend.clone(),
        shutdown.warm.clone(),
        queues,
        Arc::clone(&metrics),
    )
    .await?;
    let shared = Shared::new(
        config.clone(),
        Arc::clone(&registry),
        pool.clone(),
        Outbox::Redis(Arc::clone(&acks)),
        backend.clone(),
        &shutdown,
        Arc::clone(&control),
    );
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
        config.redis.visibility_timeout,
        config.redis.restore_interval,
        shutdown.warm.clone(),
    ));
    let liveness = tokio::spawn(keep_alive(Arc::clone(&broker), shutdown.warm.clone()));
    // Refuse waiting requests the moment warm shutdown starts, even
    // while the consumer still waits for a fetch.
    let closer = crate::broker::close_at_warm_shutdown(&pool, &shutdown);
    let service = crate::control::Service::start(&control).await;
    ready.notify_waiters();
    let handlers = TaskTracker::new();
    let consumed = consume(&broker, &shared, &handlers, &shutdown).await;
    if consumed.is_err() {
        // The broker is gone for good: stop as a warm shutdown would,
        // then report the error so that a supervisor restarts us.
        shutdown.warm.cancel();
    }

    // Warm shutdown: refuse waiting requests, finish running jobs.
    crate::broker::finish_tasks(closer, &handlers, &pool, &shutdown, &shared, service).await;
    let _ = sweeper.await;
    let _ = liveness.await;
    // A cold shutdown still writes what it holds, but gives Redis at most
    // the command timeout from then on.
    let grace = config.connection.command_timeout;
    let cold = shutdown.cold.clone();
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
    let left = crate::broker::take_outstanding(&shared);
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
    Ok(crate::broker::report(&shared, restored))
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
            _ = tokio::time::sleep(super::LIVENESS_REFRESH) => {}
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
            .min(shared.config.redis.fetch_batch.saturating_sub(1));
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
