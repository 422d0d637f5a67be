//! Jobs: what is applied ([`Job`]), what it sees ([`JobContext`]), and what
//! the caller keeps ([`JobHandle`]).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use std::marker::PhantomData;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job_cell::{JobCell, JobControl};
use crate::kill::{KillResult, KillSignal};
use crate::outcome::{Outcome, TerminateReason, Termination};
use crate::pool::TaskPool;

/// A job's id: unique within its pool and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The id as a number (ids count up from 1 in each pool).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from its number, as a remote caller gives it (Celery's
    /// `terminate_job(pid)`). Ids are per pool: a number this pool never
    /// handed out is [`KillResult::Unknown`] to it.
    pub fn from_u64(n: u64) -> Self {
        JobId(n)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// The timeout callback: called with `soft = true` when the soft time limit
/// passes and `soft = false` when the hard one does, with the limit that
/// passed. It may run twice for one job (soft, then hard); a panic in it is
/// caught and logged.
pub type TimeoutCallback = Arc<dyn Fn(bool, Duration) + Send + Sync + 'static>;

/// What a running job can see: its id and its cancellation token.
#[derive(Clone)]
pub struct JobContext {
    id: JobId,
    control: Arc<dyn JobControl>,
    /// The token, fetched from the job's cell on first use.
    token: OnceLock<CancellationToken>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl JobContext {
    pub(crate) fn new(id: JobId, control: Arc<dyn JobControl>) -> Self {
        JobContext {
            id,
            control,
            token: OnceLock::new(),
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's cancellation token: cancelled at the soft time limit and
    /// by a graceful `terminate_job` (TERM or INT), before the kill.
    pub fn token(&self) -> &CancellationToken {
        self.token.get_or_init(|| self.control.token())
    }

    /// True once the job has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.token().is_cancelled()
    }

    /// Completes when the job is asked to stop.
    pub async fn cancelled(&self) {
        self.token().cancelled().await
    }
}

/// A job to apply: a target that builds the job's future from its
/// [`JobContext`], plus callbacks, time limits and a name for signals and
/// logs.
///
/// The callbacks are part of the job's type (`C` and `A`), so that they live
/// inside the job's task with no allocation of their own:
///
/// * the **result callback** `C: FnOnce(&Outcome<T>)` is called exactly
///   once with the outcome, on the job's task (or, for a job killed before
///   it first ran, wherever its task is dropped), after the job has left the
///   job map and before its slot is freed;
/// * the **accept callback** `A: FnOnce(JobId, Instant)` is called once when
///   the job first runs, with its id and the time (Celery's
///   `accept_callback(pid, time)`); a job killed before it ran never gets it.
///
/// A panic in either is caught, logged and counted in
/// [`PoolInfo::callback_panics`](crate::PoolInfo::callback_panics); the pool
/// goes on.
///
/// # Examples
///
/// ```
/// use greenpool::{Job, TaskPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = TaskPool::builder().limit(4).build().unwrap();
/// pool.start().unwrap();
/// let job = Job::new(|ctx| async move { ctx.id().as_u64() * 10 })
///     .name("tens")
///     .callback(|outcome| assert!(outcome.is_completed()));
/// let handle = pool.apply_async(job).await.unwrap();
/// let id = handle.id();
/// assert_eq!(handle.await.completed(), Some(id.as_u64() * 10));
/// # pool.stop().await.unwrap();
/// # }
/// ```
#[must_use = "a job does nothing until it is applied"]
pub struct Job<F, T, C = NoResultCallback<T>, A = NoAcceptCallback> {
    pub(crate) target: F,
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) args: Option<String>,
    pub(crate) callback: Option<C>,
    pub(crate) accept_callback: Option<A>,
    /// Boxed: most jobs have none, and it would grow every job's task.
    pub(crate) limits: Option<Box<TimeLimits>>,
    _outcome: PhantomData<fn() -> T>,
}

/// The type of an unset result callback.
pub type NoResultCallback<T> = fn(&Outcome<T>);

/// The type of an unset accept callback.
pub type NoAcceptCallback = fn(JobId, Instant);

/// A job's time limits.
#[derive(Clone, Default)]
pub(crate) struct TimeLimits {
    pub(crate) hard: Option<Duration>,
    pub(crate) soft: Option<Duration>,
    pub(crate) callback: Option<TimeoutCallback>,
}

impl<F, Fut, T> Job<F, T>
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    /// A job whose target builds its future from the [`JobContext`].
    pub fn new(target: F) -> Self {
        Job {
            target,
            name: None,
            args: None,
            callback: None,
            accept_callback: None,
            limits: None,
            _outcome: PhantomData,
        }
    }
}

/// A job from a ready-made future that does not need its context.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = greenpool::TaskPool::builder().limit(1).build().unwrap();
/// pool.start().unwrap();
/// let handle = pool.apply_async(greenpool::job(async { "done" })).await.unwrap();
/// assert_eq!(handle.await.completed(), Some("done"));
/// # }
/// ```
pub fn job<Fut, T>(fut: Fut) -> Job<impl FnOnce(JobContext) -> Fut + Send + 'static, T>
where
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    Job::new(move |_| fut)
}

impl<F, T, C, A> Job<F, T, C, A> {
    /// Names the job, for the apply signal and logs.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A printable form of the job's arguments, for the apply signal and logs.
    pub fn args_repr(mut self, args: impl Into<String>) -> Self {
        self.args = Some(args.into());
        self
    }

    /// Sets the result callback (see [`Job`]).
    pub fn callback<C2>(self, callback: C2) -> Job<F, T, C2, A>
    where
        C2: FnOnce(&Outcome<T>) + Send + 'static,
    {
        Job {
            target: self.target,
            name: self.name,
            args: self.args,
            callback: Some(callback),
            accept_callback: self.accept_callback,
            limits: self.limits,
            _outcome: PhantomData,
        }
    }

    /// Sets the accept callback (see [`Job`]).
    pub fn accept_callback<A2>(self, callback: A2) -> Job<F, T, C, A2>
    where
        A2: FnOnce(JobId, Instant) + Send + 'static,
    {
        Job {
            target: self.target,
            name: self.name,
            args: self.args,
            callback: self.callback,
            accept_callback: Some(callback),
            limits: self.limits,
            _outcome: PhantomData,
        }
    }

    fn limits_mut(&mut self) -> &mut TimeLimits {
        self.limits.get_or_insert_with(Box::default)
    }

    /// The hard time limit: when it passes, the job is killed and its
    /// outcome is terminated with the reason "time limit".
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limits_mut().hard = Some(limit);
        self
    }

    /// The soft time limit: when it passes, the job's token is cancelled and
    /// the job may wind down by itself.
    pub fn soft_timeout(mut self, limit: Duration) -> Self {
        self.limits_mut().soft = Some(limit);
        self
    }

    /// Sets the timeout callback (see [`TimeoutCallback`]).
    pub fn timeout_callback(
        mut self,
        callback: impl Fn(bool, Duration) + Send + Sync + 'static,
    ) -> Self {
        self.limits_mut().callback = Some(Arc::new(callback));
        self
    }

    /// The job's name, if it has one.
    pub fn job_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl<F, T, C, A> fmt::Debug for Job<F, T, C, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("callback", &self.callback.is_some())
            .field("accept_callback", &self.accept_callback.is_some())
            .field("timeout", &self.limits.as_ref().and_then(|l| l.hard))
            .field("soft_timeout", &self.limits.as_ref().and_then(|l| l.soft))
            .finish_non_exhaustive()
    }
}

/// The caller's side of an applied job: its id, a way to kill it, and a
/// future of its [`Outcome`].
///
/// Dropping the handle detaches it: the job and its callback still run.
#[must_use = "dropping the handle detaches the job; keep it to await the outcome"]
pub struct JobHandle<T> {
    id: JobId,
    cell: Arc<JobCell<T>>,
    pool: TaskPool,
}

impl<T> JobHandle<T> {
    pub(crate) fn new(id: JobId, cell: Arc<JobCell<T>>, pool: TaskPool) -> Self {
        JobHandle { id, cell, pool }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// True once the job has ended and its callback has run.
    pub fn is_finished(&self) -> bool
    where
        T: Send,
    {
        self.cell.ended().is_some()
    }

    /// Kills the job, as [`TaskPool::terminate_job`].
    ///
    /// # Cancel safety
    ///
    /// As [`TaskPool::terminate_job`]: the kill goes on if this is dropped.
    pub async fn terminate(&self, signal: Option<KillSignal>) -> KillResult {
        self.pool.terminate_job(self.id, signal).await
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

    /// # Cancel safety
    ///
    /// Polling again after a drop of the `.await` is fine: the outcome waits
    /// in the handle until it is taken.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        self.cell.poll_outcome(cx).map(|o| {
            // Empty only when polled again after the outcome was taken.
            o.unwrap_or(Outcome::Terminated(Termination {
                signal: None,
                reason: TerminateReason::RuntimeShutdown,
            }))
        })
    }
}
