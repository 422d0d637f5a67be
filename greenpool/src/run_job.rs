//! The job's task: [`RunJob`], the future each admitted job runs as.
//!
//! It holds the job's current stage (not started, running, running under
//! time limits, done) and its [`JobGuard`], and its output is the job's
//! [`Outcome`], which the [`JobHandle`](crate::JobHandle) reads through
//! tokio's `JoinHandle`: no per-job cell.
//!
//! Kills are carried out by the task itself, never by aborting it: a hard
//! kill marks the job's map entry and wakes the task (see
//! `kill_switch.rs`); the task, at its next poll, sees that the pool's kill
//! epoch moved, finds the mark, sets its stage to `Done` — dropping the
//! job's future and everything it captured — and only then lets the guard
//! end the job, exactly as on completion. A job whose kill came before its
//! first poll never starts. The stage is also declared before the guard, so
//! that a task dropped unfinished (its runtime shutting down) drops the job
//! first too.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::context::JobContext;
use crate::guard::{JobGuard, EPOCH, REGISTERED};
use crate::job_id::JobId;
use crate::outcome::{Outcome, PanicInfo, TerminateReason, Termination};
use crate::pool::Inner;
use crate::time_limits::TimeLimits;
use crate::unwind::{self, CatchPanic};

thread_local! {
    /// The pool and job whose task is being polled on this thread; pool 0
    /// ([`PoolId::ANONYMOUS`](crate::PoolId::ANONYMOUS), never a pool's id)
    /// when none is.
    static CURRENT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The job of `pool` being polled on this thread, if any: how a job that
/// kills itself or stops its own pool is recognised.
pub(crate) fn current_job(pool: crate::PoolId) -> Option<JobId> {
    let (p, j) = CURRENT.with(Cell::get);
    (p != 0 && p == pool.as_u64()).then_some(JobId(j))
}

/// Marks this thread as polling a job, until dropped (also on unwind).
struct Current((u64, u64));

impl Current {
    #[inline]
    fn enter(pool: crate::PoolId, job: JobId) -> Self {
        Current(CURRENT.with(|c| c.replace((pool.as_u64(), job.0))))
    }
}

impl Drop for Current {
    #[inline]
    fn drop(&mut self) {
        let was = self.0;
        CURRENT.with(|c| c.set(was));
    }
}

/// An admitted job, ready to be spawned: its pool, id, the pool's kill
/// epoch when it was admitted, and the runtime.
///
/// `pub` only to appear in the sealed trait behind
/// [`IntoJob`](crate::IntoJob); it cannot be named from outside the crate.
#[allow(unreachable_pub)]
pub struct Admitted<'a, T> {
    pub(crate) inner: &'a Arc<Inner>,
    pub(crate) id: JobId,
    pub(crate) epoch: u64,
    pub(crate) runtime: &'a Handle,
    pub(crate) _outcome: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Admitted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("id", &self.id).finish()
    }
}

/// Spawns an admitted job's task; its output is the job's outcome.
#[inline]
pub(crate) fn spawn<F, Fut, T, C, A>(
    admitted: Admitted<'_, T>,
    target: F,
    callback: Option<C>,
    accept: Option<A>,
    limits: Option<Box<TimeLimits>>,
) -> JoinHandle<Outcome<T>>
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
        epoch,
        runtime,
        ..
    } = admitted;
    let guard = JobGuard {
        inner: Arc::clone(inner),
        id,
        callback,
        state: epoch & EPOCH,
        _outcome: PhantomData,
    };
    let task = RunJob {
        stage: Stage::Start {
            target: Some(target),
            accept,
            limits,
        },
        guard,
    };
    runtime.spawn(task)
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
        // Also holds the task's kill epoch and whether its waker is in its
        // entry (`JobGuard::state`).
        guard: JobGuard<T, C>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, Fut, T, A> {
        /// Not polled yet. (The context is made at the start, not kept
        /// here: a smaller task is moved faster.)
        Start {
            target: Option<F>,
            accept: Option<A>,
            limits: Option<Box<TimeLimits>>,
        },
        /// Running, no time limits; polled under `unwind::call_in_job`.
        Running {
            #[pin]
            fut: Fut,
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
    type Output = Outcome<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let mut this = self.project();
        let id = this.guard.id;
        // The guard's own handle on the pool, borrowed field by field (no
        // reference count traffic per poll).
        let _current = Current::enter(this.guard.inner.id, id);
        // A kill anywhere in the pool since this task last looked: is it
        // this job's? Before the start any kill request counts, after it
        // only a hard one.
        let epoch = this.guard.inner.kill_epoch.load(Ordering::SeqCst) & EPOCH;
        if epoch != this.guard.state & EPOCH {
            this.guard.state = (this.guard.state & !EPOCH) | epoch;
            let started = !matches!(*this.stage, Stage::Start { .. });
            let killed = this
                .guard
                .inner
                .jobs
                .shard(id)
                .get(&id)
                .is_some_and(|slot| slot.switch.is_killed() || (!started && slot.kill.is_some()));
            if killed {
                return Poll::Ready(end(this.stage, this.guard, None));
            }
        }
        loop {
            let outcome = match this.stage.as_mut().project() {
                StageProj::Start {
                    target,
                    accept,
                    limits,
                } => {
                    let guard = &*this.guard;
                    if let Some(accept) = accept.take() {
                        if let Err(p) = unwind::call(|| accept(guard.id, Instant::now())) {
                            guard.inner.counters.callback_panicked();
                            tracing::error!(job = %guard.id, panic = %p, "accept callback panicked");
                        }
                    }
                    let Some(target) = target.take() else {
                        debug_assert!(false, "a job starts once");
                        return Poll::Ready(end(this.stage, this.guard, None));
                    };
                    match limits.take() {
                        Some(limits) => {
                            // The soft limit cancels the job's token: found
                            // now, under the shard lock, rather than through
                            // the pool registry.
                            let ctx = match guard.inner.job_token(guard.id) {
                                Some(token) => {
                                    JobContext::with_token(guard.id, guard.inner.id, token)
                                }
                                None => JobContext::new(guard.id, guard.inner.id),
                            };
                            let fut: LimitedJob<T> = Box::pin(run_limited(target, ctx, *limits));
                            this.stage.set(Stage::Limited { fut });
                            continue;
                        }
                        // Builds the job's future, stores it and polls it
                        // for the first time under one catch. A panic while
                        // building leaves the stage as it was, one while
                        // polling leaves the future stored: either way
                        // `end` drops what there is before the guard runs.
                        None => {
                            let ctx = JobContext::new(guard.id, guard.inner.id);
                            let mut stage = this.stage.as_mut();
                            let cx = &mut *cx;
                            match unwind::call_in_job(move || {
                                stage.set(Stage::Running { fut: target(ctx) });
                                stage.poll_running(cx)
                            }) {
                                Ok(Poll::Pending) => break,
                                Ok(Poll::Ready(v)) => Outcome::Completed(v),
                                Err(p) => Outcome::Panicked(p),
                            }
                        }
                    }
                }
                StageProj::Running { fut } => match unwind::call_in_job(|| fut.poll(cx)) {
                    Ok(Poll::Pending) => break,
                    Ok(Poll::Ready(v)) => Outcome::Completed(v),
                    Err(p) => Outcome::Panicked(p),
                },
                StageProj::Limited { fut } => match fut.as_mut().poll(cx) {
                    Poll::Ready(o) => o,
                    Poll::Pending => break,
                },
                StageProj::Done => {
                    debug_assert!(false, "a finished job is not polled again");
                    return Poll::Pending;
                }
            };
            return Poll::Ready(end(this.stage, this.guard, Some(outcome)));
        }
        // The job waits. The first time, its waker goes into its entry, so
        // that a hard kill can wake it; a hard kill that came before is
        // carried out now.
        if this.guard.state & REGISTERED == 0 {
            this.guard.state |= REGISTERED;
            let killed = this
                .guard
                .inner
                .jobs
                .shard(id)
                .get_mut(&id)
                .is_some_and(|slot| slot.switch.register(|| cx.waker().clone()));
            if killed {
                return Poll::Ready(end(this.stage, this.guard, None));
            }
        }
        Poll::Pending
    }
}

impl<F, Fut: Future, T, A> Stage<F, Fut, T, A> {
    /// Polls the future of the `Running` stage, which the caller has just
    /// stored. No other stage can be found here (checked in debug builds).
    fn poll_running(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        match self.project() {
            StageProj::Running { fut } => fut.poll(cx),
            _ => {
                debug_assert!(false, "polled the job outside its running stage");
                Poll::Pending
            }
        }
    }
}

/// Drops the job's future, then lets the guard end the job.
fn end<F, Fut, T, C, A>(
    mut stage: Pin<&mut Stage<F, Fut, T, A>>,
    guard: &mut JobGuard<T, C>,
    outcome: Option<Outcome<T>>,
) -> Outcome<T>
where
    T: Send + 'static,
    C: FnOnce(&Outcome<T>),
{
    stage.set(Stage::Done);
    guard.finish(outcome)
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
