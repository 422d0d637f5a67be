//! [`JobHandle`]: the caller's side of an applied job.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::task::JoinHandle;

use crate::job_id::JobId;
use crate::kill::{KillResult, KillSignal};
use crate::outcome::{Outcome, TerminateReason, Termination};
use crate::pool::{PoolId, TaskPool};

/// The caller's side of an applied job: its id, a way to kill it, and a
/// future of its [`Outcome`].
///
/// Dropping the handle detaches it: the job and its callback still run.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = greenpool::TaskPool::builder().limit(1).build().unwrap();
/// pool.start().unwrap();
/// let handle = pool.spawn(std::future::pending::<()>()).await.unwrap();
/// handle.abort();
/// assert!(handle.await.is_terminated());
/// # pool.stop().await.unwrap();
/// # }
/// ```
#[must_use = "dropping the handle detaches the job; keep it to await the outcome"]
pub struct JobHandle<T> {
    id: JobId,
    /// The job's task, whose output is the outcome.
    task: JoinHandle<Outcome<T>>,
    /// Set once the outcome was taken.
    taken: bool,
    /// The job's pool, found by id when the handle kills (no reference of
    /// its own: while the job runs, its task keeps the pool alive, and a
    /// pool that is gone has no job left to kill).
    pool: PoolId,
}

impl<T> JobHandle<T> {
    #[inline]
    pub(crate) fn new(id: JobId, task: JoinHandle<Outcome<T>>, pool: PoolId) -> Self {
        JobHandle {
            id,
            task,
            taken: false,
            pool,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// True once the job's task has completed: its callback has run and
    /// its outcome is ready. On a multi-thread runtime this can lag, by the
    /// task's own completion, behind a `terminate_job` that already
    /// returned; awaiting the handle waits for it.
    pub fn is_finished(&self) -> bool {
        self.taken || self.task.is_finished()
    }

    /// Kills the job, as [`TaskPool::terminate_job`], and waits for it.
    ///
    /// # Cancel safety
    ///
    /// As [`TaskPool::terminate_job`]: the kill goes on if this is dropped.
    pub async fn terminate(&self, signal: Option<KillSignal>) -> KillResult {
        match TaskPool::by_id(self.pool) {
            Some(pool) => pool.terminate_job(self.id, signal).await,
            None => KillResult::AlreadyFinished,
        }
    }

    /// Kills the job at its next `.await` (a KILL) without waiting, as
    /// tokio's `JoinHandle::abort`: awaiting the handle then gives the
    /// terminated outcome, once the job is gone and its callback ran. A job
    /// that already ended keeps its outcome.
    pub fn abort(&self) {
        // The request is complete when it returns; nothing to wait for.
        if let Some(pool) = TaskPool::by_id(self.pool) {
            let _ = pool.request_kill(self.id, Some(KillSignal::Kill));
        }
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<T> Future for JobHandle<T> {
    type Output = Outcome<T>;

    /// The job's outcome, once it ended and its callback ran.
    ///
    /// # Panics
    ///
    /// Raises the result callback's panic again when the pool was built
    /// with [`callbacks_propagate`](crate::PoolBuilder::callbacks_propagate)
    /// and the callback panicked.
    ///
    /// # Cancel safety
    ///
    /// Polling again after a drop of the `.await` is fine: the outcome waits
    /// in the handle until it is taken.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let this = self.get_mut();
        let gone = Outcome::Terminated(Termination {
            signal: None,
            reason: TerminateReason::RuntimeShutdown,
        });
        if this.taken {
            // Polled again after the outcome was taken.
            return Poll::Ready(gone);
        }
        let joined = ready!(Pin::new(&mut this.task).poll(cx));
        this.taken = true;
        Poll::Ready(match joined {
            Ok(outcome) => outcome,
            // Only the result callback's panic, when the pool propagates it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime shut down under the job.
            Err(_) => gone,
        })
    }
}
