//! [`JobGuard`]: ends a job exactly once, whichever way it ends.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::job_id::JobId;
use crate::job_map::End;
use crate::outcome::{Outcome, PanicInfo, TerminateReason, Termination};
use crate::pool::Inner;
use crate::unwind;

/// Set once the guard has done its work.
pub(crate) const DONE: u64 = 1 << 63;
/// Set once the task's waker is in its map entry.
pub(crate) const REGISTERED: u64 = 1 << 62;
/// The bits of the kill epoch (62 bits: it does not wrap in practice, and
/// tasks compare it for equality only).
pub(crate) const EPOCH: u64 = REGISTERED - 1;

/// Owns everything a job must give back, and gives it back exactly once:
/// on its last poll through [`JobGuard::finish`], or from its destructor
/// when the job's task is dropped unfinished (the runtime shutting down).
///
/// The guard never holds the job's future: whoever drops it (the job's
/// task, see `run_job.rs`) has dropped the job's future first, so that a
/// job is gone when anyone is told it ended.
///
/// The end, in this order: the outcome is counted; the result callback
/// runs; the map entry goes and the job's killers are woken (so a killer
/// that comes later hears "already finished", never before the callback
/// ran); the slot is freed, which may wake `stop`; the outcome becomes the
/// task's output, for the handle.
pub(crate) struct JobGuard<T: Send + 'static, C: FnOnce(&Outcome<T>)> {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: JobId,
    pub(crate) callback: Option<C>,
    /// Flags and the task's kill epoch in one word (a smaller task is moved
    /// and stored for less): [`DONE`], [`REGISTERED`], and below them the
    /// pool's kill epoch when the task last looked at its entry (see
    /// `run_job.rs`).
    pub(crate) state: u64,
    pub(crate) _outcome: std::marker::PhantomData<fn() -> T>,
}

impl<T: Send + 'static, C: FnOnce(&Outcome<T>)> JobGuard<T, C> {
    /// Ends the job and returns its outcome: `None` means it was killed or
    /// dropped before it finished, and the map entry says why.
    ///
    /// # Panics
    ///
    /// Raises the result callback's panic again, after all the bookkeeping,
    /// when the pool propagates callback panics: the job's handle sees it.
    pub(crate) fn finish(&mut self, outcome: Option<Outcome<T>>) -> Outcome<T> {
        match self.end(outcome) {
            (outcome, None) => outcome,
            (_, Some(payload)) => std::panic::resume_unwind(payload),
        }
    }

    fn end(&mut self, outcome: Option<Outcome<T>>) -> (Outcome<T>, Option<Box<dyn Any + Send>>) {
        self.state |= DONE;
        let inner = &self.inner;
        let outcome = outcome.unwrap_or_else(|| {
            let kill = inner
                .jobs
                .shard(self.id)
                .get(&self.id)
                .and_then(|s| s.termination());
            Outcome::Terminated(kill.unwrap_or(Termination {
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
        let killers = inner
            .jobs
            .shard(self.id)
            .remove(&self.id)
            .and_then(|slot| slot.into_killers());
        if let Some(killers) = killers {
            killers.finish(if outcome.is_terminated() {
                End::Killed
            } else {
                End::Exited
            });
        }
        inner.release_slot();
        (outcome, propagate)
    }
}

impl<T: Send + 'static, C: FnOnce(&Outcome<T>)> Drop for JobGuard<T, C> {
    fn drop(&mut self) {
        if self.state & DONE == 0 {
            // Dropped unfinished: no handle will see the outcome, and a
            // destructor does not raise the callback's panic again.
            let _ = self.end(None);
        }
    }
}
