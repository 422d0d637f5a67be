//! [`JobGuard`]: ends a job exactly once, whichever way it ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::job_cell::JobCell;
use crate::job_id::JobId;
use crate::outcome::{Outcome, PanicInfo, TerminateReason, Termination};
use crate::pool::Inner;
use crate::unwind;

/// Owns everything a job must give back, and gives it back exactly once:
/// on its last poll through [`JobGuard::finish`], or from its destructor
/// when the job's task is dropped (killed, runtime shutdown).
///
/// The guard never holds the job's future: whoever drops it (the job's
/// task, see `run_job.rs`) has dropped the job's future first, so that a
/// job is gone when anyone is told it ended.
///
/// The end, in this order: the outcome is counted; the result callback
/// runs; the outcome goes to the handle and the job's killers are woken;
/// the map entry goes (so a killer that comes later hears "already
/// finished", never before the callback ran); the slot is freed, which may
/// wake `stop`.
pub(crate) struct JobGuard<T: Send + 'static, C: FnOnce(&Outcome<T>)> {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: JobId,
    pub(crate) callback: Option<C>,
    /// The job's cell; taken when the guard has done its work.
    pub(crate) cell: Option<Arc<JobCell<T>>>,
}

impl<T: Send + 'static, C: FnOnce(&Outcome<T>)> JobGuard<T, C> {
    /// Ends the job: `None` means it was dropped before it finished (or
    /// stopped at its start by a kill).
    pub(crate) fn finish(&mut self, outcome: Option<Outcome<T>>) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        let inner = &self.inner;
        let outcome = outcome.unwrap_or_else(|| {
            Outcome::Terminated(cell.kill().unwrap_or(Termination {
                signal: None,
                reason: TerminateReason::RuntimeShutdown,
            }))
        });
        let counter = match &outcome {
            Outcome::Completed(_) => &inner.counters.ended.completed,
            Outcome::Panicked(_) => &inner.counters.ended.panicked,
            Outcome::Terminated(_) => &inner.counters.ended.terminated,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut propagate = None;
        if let Some(callback) = self.callback.take() {
            if let Err(payload) = unwind::call_keep(|| callback(&outcome)) {
                inner.counters.callback_panicked();
                let info = PanicInfo::from_payload(&*payload);
                tracing::error!(job = %self.id, panic = %info, "result callback panicked");
                if inner.config.callbacks_propagate {
                    propagate = Some(payload);
                }
            }
        }
        cell.complete(outcome, propagate);
        inner.jobs.shard(self.id).remove(&self.id);
        inner.release_slot();
    }
}

impl<T: Send + 'static, C: FnOnce(&Outcome<T>)> Drop for JobGuard<T, C> {
    fn drop(&mut self) {
        self.finish(None);
    }
}
