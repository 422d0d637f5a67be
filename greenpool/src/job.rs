//! Jobs: what is applied ([`Job`]), what it sees ([`JobContext`]), and what
//! the caller keeps ([`JobHandle`]).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// The result callback: called exactly once with the job's outcome.
///
/// It runs on the job's task (or on the task that killed the job, when the
/// job was killed before it first ran) after the job has left the job map
/// and before its slot is freed. A panic in it is caught and logged; the
/// pool goes on.
pub type ResultCallback<T> = Box<dyn FnOnce(&Outcome<T>) + Send + 'static>;

/// The accept callback: called once when the job first runs, with its id
/// and the time it started (Celery's `accept_callback(pid, time)`). A job
/// killed before it ran never gets it. A panic in it is caught and logged;
/// the job still runs.
pub type AcceptCallback = Box<dyn FnOnce(JobId, Instant) + Send + 'static>;

/// The timeout callback: called with `soft = true` when the soft time limit
/// passes and `soft = false` when the hard one does, with the limit that
/// passed. It may run twice for one job (soft, then hard); a panic in it is
/// caught and logged.
pub type TimeoutCallback = Arc<dyn Fn(bool, Duration) + Send + Sync + 'static>;

/// What a running job can see: its id and its cancellation token.
#[derive(Debug, Clone)]
pub struct JobContext {
    id: JobId,
    token: CancellationToken,
}

impl JobContext {
    pub(crate) fn new(id: JobId, token: CancellationToken) -> Self {
        JobContext { id, token }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's cancellation token: cancelled at the soft time limit and
    /// by a graceful `terminate_job` (TERM or INT), before the kill.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// True once the job has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the job is asked to stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }
}

/// A job to apply: a target that builds the job's future from its
/// [`JobContext`], plus callbacks, time limits and a name for signals and
/// logs.
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
pub struct Job<F, T> {
    pub(crate) target: F,
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) args: Option<String>,
    pub(crate) callback: Option<ResultCallback<T>>,
    pub(crate) accept_callback: Option<AcceptCallback>,
    pub(crate) limits: TimeLimits,
}

/// A job's time limits.
#[derive(Clone, Default)]
pub(crate) struct TimeLimits {
    pub(crate) hard: Option<Duration>,
    pub(crate) soft: Option<Duration>,
    pub(crate) callback: Option<TimeoutCallback>,
}

impl TimeLimits {
    pub(crate) fn is_set(&self) -> bool {
        self.hard.is_some() || self.soft.is_some()
    }
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
            limits: TimeLimits::default(),
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

impl<F, T> Job<F, T> {
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

    /// Sets the result callback (see [`ResultCallback`]).
    pub fn callback(mut self, callback: impl FnOnce(&Outcome<T>) + Send + 'static) -> Self {
        self.callback = Some(Box::new(callback));
        self
    }

    /// Sets the accept callback (see [`AcceptCallback`]).
    pub fn accept_callback(
        mut self,
        callback: impl FnOnce(JobId, Instant) + Send + 'static,
    ) -> Self {
        self.accept_callback = Some(Box::new(callback));
        self
    }

    /// The hard time limit: when it passes, the job is killed and its
    /// outcome is terminated with the reason "time limit".
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limits.hard = Some(limit);
        self
    }

    /// The soft time limit: when it passes, the job's token is cancelled and
    /// the job may wind down by itself.
    pub fn soft_timeout(mut self, limit: Duration) -> Self {
        self.limits.soft = Some(limit);
        self
    }

    /// Sets the timeout callback (see [`TimeoutCallback`]).
    pub fn timeout_callback(
        mut self,
        callback: impl Fn(bool, Duration) + Send + Sync + 'static,
    ) -> Self {
        self.limits.callback = Some(Arc::new(callback));
        self
    }

    /// The job's name, if it has one.
    pub fn job_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl<F, T> fmt::Debug for Job<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("callback", &self.callback.is_some())
            .field("accept_callback", &self.accept_callback.is_some())
            .field("timeout", &self.limits.hard)
            .field("soft_timeout", &self.limits.soft)
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
    rx: oneshot::Receiver<Outcome<T>>,
    pool: TaskPool,
}

impl<T> JobHandle<T> {
    pub(crate) fn new(id: JobId, rx: oneshot::Receiver<Outcome<T>>, pool: TaskPool) -> Self {
        JobHandle { id, rx, pool }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// True once the job has left the pool's job map.
    pub fn is_finished(&self) -> bool {
        !self.pool.contains_job(self.id)
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
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // The job's guard always sends before it goes; only a runtime
            // that drops the task without running its destructor loses it.
            r.unwrap_or(Outcome::Terminated(Termination {
                signal: None,
                reason: TerminateReason::RuntimeShutdown,
            }))
        })
    }
}
