//! What is applied: [`Job`] (type-erased, what signatures and errors name)
//! and [`JobBuilder`] (what [`Job::new`] returns, fully typed, so that a job
//! applied straight from it costs no allocation of its own).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::context::JobContext;
use crate::job_id::JobId;
use crate::outcome::Outcome;
use crate::run_job::{self, Admitted};
use crate::time_limits::TimeLimits;
pub use crate::time_limits::TimeoutCallback;

/// The type of an unset result callback.
pub type NoResultCallback<T> = fn(&Outcome<T>);

/// The type of an unset accept callback.
pub type NoAcceptCallback = fn(JobId, Instant);

/// What every job carries besides its code: name, arguments, limits.
///
/// `pub` only to appear in the sealed trait behind [`IntoJob`]; it cannot
/// be named from outside the crate.
#[derive(Default)]
#[allow(unreachable_pub)]
pub struct JobMeta {
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) args: Option<String>,
    /// Boxed: most jobs have none, and it would grow every job's task.
    pub(crate) limits: Option<Box<TimeLimits>>,
}

impl JobMeta {
    fn limits_mut(&mut self) -> &mut TimeLimits {
        self.limits.get_or_insert_with(Box::default)
    }
}

impl fmt::Debug for JobMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("timeout", &self.limits.as_ref().and_then(|l| l.hard))
            .field("soft_timeout", &self.limits.as_ref().and_then(|l| l.soft))
            .finish_non_exhaustive()
    }
}

/// The options every job takes, on [`Job`] and [`JobBuilder`] alike.
macro_rules! meta_setters {
    () => {
        /// Names the job, for the apply signal and logs.
        pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
            self.meta.name = Some(name.into());
            self
        }

        /// A printable form of the job's arguments, for the apply signal and
        /// logs.
        pub fn args_repr(mut self, args: impl Into<String>) -> Self {
            self.meta.args = Some(args.into());
            self
        }

        /// The hard time limit: when it passes, the job is killed and its
        /// outcome is terminated with the reason "time limit". A limit too
        /// far away to be represented as an instant means no limit.
        pub fn timeout(mut self, limit: Duration) -> Self {
            self.meta.limits_mut().hard = Some(limit);
            self
        }

        /// The soft time limit: when it passes, the job's token is cancelled
        /// and the job may wind down by itself. A limit too far away to be
        /// represented as an instant means no limit.
        pub fn soft_timeout(mut self, limit: Duration) -> Self {
            self.meta.limits_mut().soft = Some(limit);
            self
        }

        /// Sets the timeout callback (see [`TimeoutCallback`]).
        pub fn timeout_callback(
            mut self,
            callback: impl Fn(bool, Duration) + Send + Sync + 'static,
        ) -> Self {
            self.meta.limits_mut().callback = Some(Arc::new(callback));
            self
        }

        /// The job's name, if it has one.
        pub fn job_name(&self) -> Option<&str> {
            self.meta.name.as_deref()
        }
    };
}

/// A job to apply, its code type-erased: what a signature, a queue or an
/// [`ApplyError`](crate::ApplyError) names, with only the type of the
/// job's value as parameter.
///
/// [`Job::new`] returns a [`JobBuilder`], which sets the callbacks and can be
/// applied as it is; it becomes a `Job<T>` through [`JobBuilder::boxed`] or
/// `into()`, at the cost of one allocation (applying a `Job<T>` moves its
/// parts out of that box into the job's task, so the job itself runs
/// exactly as when applied from the builder).
///
/// # Examples
///
/// ```
/// use greenpool::{Job, TaskPool};
///
/// fn doubler(n: u64) -> Job<u64> {
///     Job::new(move |_ctx| async move { n * 2 }).name("double").boxed()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = TaskPool::builder().limit(4).build().unwrap();
/// pool.start().unwrap();
/// let jobs: Vec<Job<u64>> = (1..=3).map(doubler).collect();
/// let mut sum = 0;
/// for job in jobs {
///     sum += pool.apply_async(job).await.unwrap().await.completed().unwrap();
/// }
/// assert_eq!(sum, 12);
/// # pool.stop().await.unwrap();
/// # }
/// ```
#[must_use = "a job does nothing until it is applied"]
pub struct Job<T: 'static> {
    parts: Box<dyn ErasedParts<T>>,
    meta: JobMeta,
}

/// A job's code and callbacks, behind one box.
trait ErasedParts<T>: Send {
    fn launch(self: Box<Self>, meta: JobMeta, admitted: Admitted<'_, T>) -> JoinHandle<Outcome<T>>;
}

/// The typed parts that [`Job`] boxes.
struct Parts<F, C, A> {
    target: F,
    callback: Option<C>,
    accept: Option<A>,
}

impl<F, Fut, T, C, A> ErasedParts<T> for Parts<F, C, A>
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(&Outcome<T>) + Send + 'static,
    A: FnOnce(JobId, Instant) + Send + 'static,
{
    fn launch(self: Box<Self>, meta: JobMeta, admitted: Admitted<'_, T>) -> JoinHandle<Outcome<T>> {
        let Parts {
            target,
            callback,
            accept,
        } = *self;
        run_job::spawn(admitted, target, callback, accept, meta.limits)
    }
}

impl<T: Send + 'static> Job<T> {
    /// A job whose target builds its future from the [`JobContext`]; set
    /// its callbacks on the [`JobBuilder`] this returns.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<F, Fut>(target: F) -> JobBuilder<F, T>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        JobBuilder {
            target,
            callback: None,
            accept: None,
            meta: JobMeta::default(),
            _outcome: PhantomData,
        }
    }

    meta_setters!();
}

impl<T: 'static> fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.meta.fmt(f)
    }
}

/// A job with its types spelled out: target `F`, value `T`, result callback
/// `C` and accept callback `A`. [`Job::new`] and [`job`] make one; apply it
/// as it is, or turn it into a [`Job<T>`] with [`JobBuilder::boxed`].
///
/// The callbacks live inside the job's task with no allocation of their own:
///
/// * the **result callback** `C: FnOnce(&Outcome<T>)` is called exactly
///   once with the outcome, on the job's task (or, for a job killed before
///   it first ran, wherever its task is dropped), after the job's future
///   and everything it captured are dropped, and before its handle, its
///   killers and `stop` learn that it ended and its slot is freed;
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
pub struct JobBuilder<F, T, C = NoResultCallback<T>, A = NoAcceptCallback> {
    target: F,
    callback: Option<C>,
    accept: Option<A>,
    meta: JobMeta,
    _outcome: PhantomData<fn() -> T>,
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
pub fn job<Fut, T>(fut: Fut) -> JobBuilder<impl FnOnce(JobContext) -> Fut + Send + 'static, T>
where
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    Job::new(move |_| fut)
}

impl<F, T, C, A> JobBuilder<F, T, C, A> {
    /// Sets the result callback (see [`JobBuilder`]).
    pub fn callback<C2>(self, callback: C2) -> JobBuilder<F, T, C2, A>
    where
        C2: FnOnce(&Outcome<T>) + Send + 'static,
    {
        JobBuilder {
            target: self.target,
            callback: Some(callback),
            accept: self.accept,
            meta: self.meta,
            _outcome: PhantomData,
        }
    }

    /// Sets the accept callback (see [`JobBuilder`]).
    pub fn accept_callback<A2>(self, callback: A2) -> JobBuilder<F, T, C, A2>
    where
        A2: FnOnce(JobId, Instant) + Send + 'static,
    {
        JobBuilder {
            target: self.target,
            callback: self.callback,
            accept: Some(callback),
            meta: self.meta,
            _outcome: PhantomData,
        }
    }

    meta_setters!();
}

impl<F, Fut, T, C, A> JobBuilder<F, T, C, A>
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(&Outcome<T>) + Send + 'static,
    A: FnOnce(JobId, Instant) + Send + 'static,
{
    /// The same job with its types erased into a [`Job<T>`] (one
    /// allocation).
    pub fn boxed(self) -> Job<T> {
        Job {
            parts: Box::new(Parts {
                target: self.target,
                callback: self.callback,
                accept: self.accept,
            }),
            meta: self.meta,
        }
    }
}

impl<F, Fut, T, C, A> From<JobBuilder<F, T, C, A>> for Job<T>
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(&Outcome<T>) + Send + 'static,
    A: FnOnce(JobId, Instant) + Send + 'static,
{
    fn from(builder: JobBuilder<F, T, C, A>) -> Self {
        builder.boxed()
    }
}

impl<F, T, C, A> fmt::Debug for JobBuilder<F, T, C, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobBuilder")
            .field("meta", &self.meta)
            .field("callback", &self.callback.is_some())
            .field("accept_callback", &self.accept.is_some())
            .finish()
    }
}

/// What [`TaskPool::apply_async`](crate::TaskPool::apply_async) takes: a
/// [`Job<T>`] or a [`JobBuilder`] whose job yields `T`. Implemented by those
/// two only.
pub trait IntoJob<T: Send + 'static>: sealed::Launch<T> {}

impl<T: Send + 'static, J: sealed::Launch<T>> IntoJob<T> for J {}

pub(crate) mod sealed {
    #![allow(unreachable_pub)]
    //! The methods behind [`IntoJob`](super::IntoJob), out of users' reach.

    use super::*;

    /// What the pool does with a job it applies.
    pub trait Launch<T: Send + 'static>: Send + 'static {
        /// Name, arguments and limits.
        #[doc(hidden)]
        fn meta(&self) -> &JobMeta;
        /// Spawns the admitted job; its task's output is the outcome.
        #[doc(hidden)]
        fn launch(self, admitted: Admitted<'_, T>) -> JoinHandle<Outcome<T>>;
        /// The job, type-erased, to give back in an error.
        #[doc(hidden)]
        fn into_job(self) -> Job<T>;
    }

    impl<T: Send + 'static> Launch<T> for Job<T> {
        fn meta(&self) -> &JobMeta {
            &self.meta
        }
        fn launch(self, admitted: Admitted<'_, T>) -> JoinHandle<Outcome<T>> {
            self.parts.launch(self.meta, admitted)
        }
        fn into_job(self) -> Job<T> {
            self
        }
    }

    impl<F, Fut, T, C, A> Launch<T> for JobBuilder<F, T, C, A>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        C: FnOnce(&Outcome<T>) + Send + 'static,
        A: FnOnce(JobId, Instant) + Send + 'static,
    {
        fn meta(&self) -> &JobMeta {
            &self.meta
        }
        #[inline]
        fn launch(self, admitted: Admitted<'_, T>) -> JoinHandle<Outcome<T>> {
            run_job::spawn(
                admitted,
                self.target,
                self.callback,
                self.accept,
                self.meta.limits,
            )
        }
        fn into_job(self) -> Job<T> {
            self.boxed()
        }
    }
}
