//! The job's task: [`RunJob`], the future each admitted job runs as.
//!
//! It holds the job's current stage (not started, running, running under
//! time limits, done) and its [`JobGuard`]. The stage is declared first, so
//! that when the task is dropped — a kill, `terminate`, a runtime shutting
//! down — the job's future and everything it captured are dropped *before*
//! the guard ends the job; on completion the stage is set to `Done` before
//! the guard runs, which gives the same order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::context::JobContext;
use crate::guard::JobGuard;
use crate::job::TimeLimits;
use crate::job_cell::JobCell;
use crate::job_id::JobId;
use crate::outcome::{Outcome, PanicInfo, TerminateReason, Termination};
use crate::pool::Inner;
use crate::unwind::{self, CatchPanic};

/// An admitted job, ready to be spawned: its pool, id, cell and runtime.
///
/// `pub` only to appear in the sealed trait behind
/// [`IntoJob`](crate::IntoJob); it cannot be named from outside the crate.
#[allow(unreachable_pub)]
pub struct Admitted<'a, T> {
    pub(crate) inner: &'a Arc<Inner>,
    pub(crate) id: JobId,
    pub(crate) cell: &'a Arc<JobCell<T>>,
    pub(crate) runtime: &'a Handle,
}

impl<T> std::fmt::Debug for Admitted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("id", &self.id).finish()
    }
}

/// Spawns an admitted job's task; returns its abort handle.
pub(crate) fn spawn<F, Fut, T, C, A>(
    admitted: Admitted<'_, T>,
    target: F,
    callback: Option<C>,
    accept: Option<A>,
    limits: Option<Box<TimeLimits>>,
) -> AbortHandle
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(&Outcome<T>) + Send + 'static,
    A: FnOnce(JobId, Instant) + Send + 'static,
{
    let Admitted {
        inner,
        id,
        cell,
        runtime,
    } = admitted;
    let guard = JobGuard {
        inner: Arc::clone(inner),
        id,
        callback,
        cell: Some(Arc::clone(cell)),
    };
    let ctx = JobContext::new(id, Arc::clone(cell) as _);
    let task = RunJob {
        stage: Stage::Start {
            target: Some(target),
            ctx: Some(ctx),
            accept,
            limits,
        },
        guard,
    };
    runtime.spawn(task).abort_handle()
}

/// A time-limited job's future, boxed so that its timers do not grow every
/// job's task.
type LimitedJob<T> = Pin<Box<dyn Future<Output = Outcome<T>> + Send>>;

pin_project_lite::pin_project! {
    /// The job's task: accept callback, target under its limits, outcome.
    ///
    /// A hand-written future rather than an `async fn`, so that the task
    /// holds the guard plus whichever stage is current, and no moved-from
    /// copies of the target or of the job's future.
    #[must_use = "futures do nothing unless polled"]
    struct RunJob<F, Fut, T, C, A>
    where
        T: Send,
        T: 'static,
        C: FnOnce(&Outcome<T>),
    {
        // First: fields drop in declaration order, and the job must be
        // gone before its guard ends it.
        #[pin]
        stage: Stage<F, Fut, T, A>,
        guard: JobGuard<T, C>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, Fut, T, A> {
        /// Not polled yet.
        Start {
            target: Option<F>,
            ctx: Option<JobContext>,
            accept: Option<A>,
            limits: Option<Box<TimeLimits>>,
        },
        /// Running, no time limits.
        Running {
            #[pin]
            fut: CatchPanic<Fut>,
        },
        /// Running under time limits.
        Limited {
            fut: LimitedJob<T>,
        },
        /// Ended.
        Done,
    }
}

impl<F, Fut, T, C, A> Future for RunJob<F, Fut, T, C, A>
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(&Outcome<T>) + Send + 'static,
    A: FnOnce(JobId, Instant) + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let outcome = match this.stage.as_mut().project() {
                StageProj::Start {
                    target,
                    ctx,
                    accept,
                    limits,
                } => {
                    let guard = &*this.guard;
                    // A job killed before it started never starts, on any
                    // runtime: the kill may come between its spawn and the
                    // storing of its abort handle.
                    if guard.cell.as_ref().is_some_and(|c| c.kill_requested()) {
                        None
                    } else {
                        if let Some(accept) = accept.take() {
                            if let Err(p) = unwind::call(|| accept(guard.id, Instant::now())) {
                                guard.inner.counters.callback_panicked();
                                tracing::error!(job = %guard.id, panic = %p, "accept callback panicked");
                            }
                        }
                        let (Some(target), Some(ctx)) = (target.take(), ctx.take()) else {
                            debug_assert!(false, "a job starts once");
                            return Poll::Ready(());
                        };
                        match limits.take() {
                            Some(limits) => {
                                let fut: LimitedJob<T> =
                                    Box::pin(run_limited(target, ctx, *limits));
                                this.stage.set(Stage::Limited { fut });
                                continue;
                            }
                            None => match unwind::call_in_job(move || target(ctx)) {
                                Ok(fut) => {
                                    this.stage.set(Stage::Running {
                                        fut: CatchPanic::new(fut),
                                    });
                                    continue;
                                }
                                // Building the job's future panicked.
                                Err(p) => Some(Outcome::Panicked(p)),
                            },
                        }
                    }
                }
                StageProj::Running { fut } => match fut.poll(cx) {
                    Poll::Ready(r) => Some(into_outcome(r)),
                    Poll::Pending => return Poll::Pending,
                },
                StageProj::Limited { fut } => match fut.as_mut().poll(cx) {
                    Poll::Ready(o) => Some(o),
                    Poll::Pending => return Poll::Pending,
                },
                StageProj::Done => return Poll::Ready(()),
            };
            // The job's future is dropped before the guard reports.
            this.stage.set(Stage::Done);
            this.guard.finish(outcome);
            return Poll::Ready(());
        }
    }
}

fn into_outcome<T>(r: Result<T, PanicInfo>) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Completed(v),
        Err(p) => Outcome::Panicked(p),
    }
}

/// When a limit passes, measured from `start`; `None` for no limit, and for
/// a limit too far away to be an instant (that is no limit either).
fn deadline(start: Instant, limit: Option<Duration>) -> Option<Instant> {
    limit.and_then(|d| start.checked_add(d))
}

/// Runs the target under its soft and hard time limits.
async fn run_limited<F, Fut, T>(target: F, ctx: JobContext, limits: TimeLimits) -> Outcome<T>
where
    F: FnOnce(JobContext) -> Fut,
    Fut: Future<Output = T>,
{
    let start = Instant::now();
    let token = ctx.token().clone();
    let id = ctx.id();
    let soft_at = deadline(start, limits.soft);
    let hard_at = deadline(start, limits.hard);
    let notify = |soft: bool, limit: Option<Duration>| {
        if let Some(cb) = &limits.callback {
            if let Err(p) = unwind::call(|| cb(soft, limit.unwrap_or_default())) {
                tracing::error!(job = %id, panic = %p, "timeout callback panicked");
            }
        }
    };
    let fire_soft = || {
        tracing::warn!(job = %id, "soft time limit exceeded; cancelling the job's token");
        token.cancel();
        notify(true, limits.soft);
    };
    let fut = match unwind::call_in_job(move || target(ctx)) {
        Ok(fut) => fut,
        Err(p) => return Outcome::Panicked(p),
    };
    let mut work = std::pin::pin!(CatchPanic::new(fut));
    let mut soft_fired = false;
    loop {
        tokio::select! {
            biased;
            r = &mut work => return into_outcome(r),
            _ = tokio::time::sleep_until(hard_at.unwrap_or(start)), if hard_at.is_some() => {
                // Both limits may pass within one poll: the soft one is
                // still reported, first.
                if !soft_fired && soft_at.is_some_and(|s| Some(s) <= hard_at) {
                    fire_soft();
                }
                tracing::warn!(job = %id, "hard time limit exceeded; killing the job");
                notify(false, limits.hard);
                return Outcome::Terminated(Termination {
                    signal: None,
                    reason: TerminateReason::TimeLimit,
                });
            }
            _ = tokio::time::sleep_until(soft_at.unwrap_or(start)), if soft_at.is_some() && !soft_fired => {
                soft_fired = true;
                fire_soft();
            }
        }
    }
}
