//! Killing one job: `terminate_job`, and the grace escalation of TERM/INT.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Waker;

use super::{Inner, TaskPool};
use crate::job_id::JobId;
use crate::job_map::{End, Killers};
use crate::kill::{KillResult, KillSignal};
use crate::outcome::{TerminateReason, Termination};
use crate::run_job::current_job;

/// What a kill request found.
pub(crate) enum Request {
    /// No job by that id now.
    Gone(KillResult),
    /// The job kills itself; it ends at its next `.await`.
    Own,
    /// The kill is under way; wait on the job's killers.
    Waiting(Arc<Killers>),
}

impl TaskPool {
    /// Kills a job by id and returns once it has ended and its callback has
    /// run.
    ///
    /// With no signal or [`KillSignal::Kill`], the job is aborted at its
    /// current `.await`. With [`KillSignal::Term`] or [`KillSignal::Int`],
    /// its token is cancelled first and the kill comes after the pool's
    /// grace period if the job is still there. An abort only schedules the
    /// kill, which lands at the job's next `.await`; a job that completes
    /// first keeps its own outcome ([`KillResult::Exited`]). A job killed
    /// before it started never runs, whatever the signal.
    ///
    /// When it returns [`KillResult::Killed`] or [`KillResult::Exited`], the
    /// job's future and everything it captured have been dropped and its
    /// callback has run. An unknown or finished id is a no-op, reported as
    /// such. A job that kills itself gets [`KillResult::Requested`] at once.
    ///
    /// # Cancel safety
    ///
    /// The kill is requested before the first `.await` and carried out
    /// whether or not this future is polled again, grace period included.
    pub async fn terminate_job(&self, id: JobId, signal: Option<KillSignal>) -> KillResult {
        match self.request_kill(id, signal) {
            Request::Gone(r) => r,
            Request::Own => KillResult::Requested,
            Request::Waiting(killers) => match wait_ended(&killers).await {
                End::Killed => KillResult::Killed,
                End::Exited => KillResult::Exited,
                End::Refused => KillResult::AlreadyFinished,
            },
        }
    }

    /// Asks for a job's kill without waiting for it (the synchronous part
    /// of [`terminate_job`](TaskPool::terminate_job)).
    pub(crate) fn request_kill(&self, id: JobId, signal: Option<KillSignal>) -> Request {
        let graceful = signal.is_some_and(KillSignal::is_graceful);
        let own = current_job(self.inner.id) == Some(id);
        let (killers, waker) = {
            let mut shard = self.inner.jobs.shard(id);
            let Some(slot) = shard.get_mut(&id) else {
                return Request::Gone(
                    if id.0 != 0 && id.0 < self.inner.next_job.load(Ordering::Relaxed) {
                        KillResult::AlreadyFinished
                    } else {
                        KillResult::Unknown
                    },
                );
            };
            let killers = slot
                .request_kill(Termination {
                    signal,
                    reason: TerminateReason::Killed,
                })
                .killers();
            let waker = if graceful && !own {
                slot.token().cancel();
                None
            } else {
                slot.switch.kill()
            };
            // Under the lock, after the mark: a task that sees the new
            // epoch finds the mark.
            self.inner.bump_kill_epoch();
            (killers, waker)
        };
        // Woken after the epoch moved, so that the task looks.
        if let Some(w) = waker {
            w.wake();
        }
        if own {
            return Request::Own;
        }
        if graceful {
            self.escalate_after_grace(id);
        }
        Request::Waiting(killers)
    }

    /// Kills `id` after the grace period unless it has ended by then. A task
    /// of its own, so that the kill happens even if the caller goes away;
    /// the kill switch carries it out even if the job's task is not stored
    /// yet.
    fn escalate_after_grace(&self, id: JobId) {
        let Some(runtime) = self.inner.runtime.get() else {
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let grace = self.inner.config.term_grace;
        runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(inner) = weak.upgrade() {
                let waker: Option<Waker> = {
                    let mut shard = inner.jobs.shard(id);
                    let waker = shard.get_mut(&id).and_then(|slot| slot.switch.kill());
                    inner.bump_kill_epoch();
                    waker
                };
                if let Some(w) = waker {
                    w.wake();
                }
            }
        });
    }
}

/// Waits for one job to end. Only that job's end wakes this wait.
async fn wait_ended(killers: &Killers) -> End {
    loop {
        let notified = killers.ended.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so an end in between still wakes.
        notified.as_mut().enable();
        if let Some(end) = killers.end() {
            return end;
        }
        notified.await;
    }
}
