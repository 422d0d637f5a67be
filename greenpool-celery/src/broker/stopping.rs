//! What every consumer does when the worker stops, whatever its broker:
//! refuse waiting requests the moment warm shutdown starts, let the
//! running tasks end (or kill them at cold shutdown), hand over what is
//! still unacked, and report the worker's counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use greenpool::TaskPool;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::control::Service;
use crate::worker::{Shared, ShutdownHandle, WorkerReport};

/// Closes `pool` the moment warm shutdown starts, even while the consumer
/// still waits on its broker: requests waiting for a slot are refused.
pub(crate) fn close_at_warm_shutdown(pool: &TaskPool, shutdown: &ShutdownHandle) -> JoinHandle<()> {
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
pub(crate) async fn finish_tasks(
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

/// The tags of the messages still unacked (prefetched, waiting for their
/// ETA, or late-ack tasks that were killed), taken out of the books.
pub(crate) fn take_outstanding(shared: &Shared) -> Vec<String> {
    shared
        .outstanding
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .collect()
}

/// The worker's report: its counters, and the messages it gave back.
pub(crate) fn report(shared: &Arc<Shared>, restored: u64) -> WorkerReport {
    let c = &shared.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    WorkerReport {
        received: load(&c.received),
        succeeded: load(&c.succeeded),
        failed: load(&c.failed),
        revoked: load(&c.revoked),
        retried: load(&c.retried),
        restored,
    }
}
