//! [`TaskPool`]: the state machine, applying, killing, resizing, stopping.
//!
//! # Invariants
//!
//! * A job is in the job map from before its task can run until its guard
//!   ends it; the guard removes it on every path (completion, panic, kill,
//!   time limit, runtime shutdown), so the map never leaks.
//! * Every admitted job gets exactly one outcome: the guard's `finish` runs
//!   once, either from the job's last poll or from its destructor.
//! * Once the state leaves `Run`, no job is admitted. An applying task takes
//!   the job's slot (counted in the limiter's `running`), puts the job in
//!   the map, and only then reads the state; `close` and `terminate` write
//!   the state before they count `running` or walk the map. Both sides use
//!   `SeqCst`, so an apply that still reads `Run` came first: `stop` waits
//!   for it and `terminate` finds it in the map. One that reads anything
//!   else takes its job back out and gives its slot back.
//! * `stop` returns only after every admitted job's callback has run: a
//!   guard gives its slot back as its last step, and the last one to do so
//!   after the pool has closed wakes `stop`. (The slot count doubles as the
//!   count of jobs in flight, so no separate tracker is kept per job.)
//! * The limiter's own invariants are in `limiter.rs`; `free = limit -
//!   running` holds at every lock boundary.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::error::{ApplyError, ResizeError, RestartError, StartError, StopError};
use crate::info::PoolInfo;
use crate::job::{Job, JobContext, JobHandle, JobId, TimeLimits};
use crate::job_cell::{JobCell, JobControl};
use crate::job_map::{JobMap, Slot};
use crate::kill::{KillResult, KillSignal};
use crate::limiter::Limiter;
use crate::outcome::{Outcome, PanicInfo, TerminateReason, Termination};
use crate::signals::{self, ApplyArgs};
use crate::unwind;

/// The lifecycle states of Celery's `BasePool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PoolState {
    /// Built, not started.
    NotStarted,
    /// Started: accepts jobs.
    Run,
    /// Closed: running jobs go on, no new ones are accepted.
    Close,
    /// Stopped or terminated.
    Terminate,
}

impl PoolState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => PoolState::Run,
            2 => PoolState::Close,
            3 => PoolState::Terminate,
            _ => PoolState::NotStarted,
        }
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolState::NotStarted => "not started",
            PoolState::Run => "running",
            PoolState::Close => "closed",
            PoolState::Terminate => "terminated",
        })
    }
}

/// Names a pool as the sender of [signals](crate::signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(u64);

impl PoolId {
    /// A sender that is no pool, for sending signals by hand.
    pub const ANONYMOUS: PoolId = PoolId(0);

    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool-{}", self.0)
    }
}

/// What applying a job gives: its handle, or the job back with the reason.
type Applied<F, T, C, A> = Result<JobHandle<T>, ApplyError<Job<F, T, C, A>>>;

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// Checked options, from the builder.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) limit: usize,
    pub(crate) putlocks: bool,
    pub(crate) callbacks_propagate: bool,
    pub(crate) term_grace: Duration,
    pub(crate) options: std::collections::BTreeMap<String, String>,
}

/// Event counters, all `Relaxed`: they are statistics, never used to decide.
///
/// The applying side's counters and the ending side's sit on separate cache
/// lines, so that a task applying jobs and the workers ending them do not
/// pull one line back and forth.
#[derive(Debug, Default)]
struct Counters {
    waiting: AtomicUsize,
    applied: AtomicU64,
    ended: CachePadded<EndCounters>,
}

#[derive(Debug, Default)]
struct EndCounters {
    completed: AtomicU64,
    panicked: AtomicU64,
    terminated: AtomicU64,
    callback_panics: AtomicU64,
}

/// Keeps its value on a cache line (pair) of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Inner {
    id: PoolId,
    config: Config,
    /// The free slots; closed when the pool closes, so that waiting applies
    /// give their jobs back at once.
    limiter: Limiter<Semaphore>,
    /// JobId -> abort handle and shared cell.
    jobs: JobMap,
    /// The lifecycle state; see the invariants for its ordering.
    state: AtomicU8,
    /// Serialises state changes (start, close, stop, terminate).
    lifecycle: std::sync::Mutex<()>,
    /// Woken when the last job ends after the pool left `Run`.
    drained: tokio::sync::Notify,
    /// Next job id; ids start at 1 and are never reused.
    next_job: AtomicU64,
    /// Woken after a job ends while `killers` > 0.
    job_ended: tokio::sync::Notify,
    /// `terminate_job` calls waiting for a job to end.
    killers: AtomicUsize,
    /// The runtime jobs are spawned on, set by `start`.
    runtime: OnceLock<Handle>,
    counters: Counters,
}

impl Inner {
    /// Changes the state unless `keep` says the current one stays; returns
    /// the state before.
    fn transition(&self, to: PoolState, keep: impl Fn(PoolState) -> bool) -> PoolState {
        let _serial = self
            .lifecycle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from = self.state();
        if !keep(from) {
            self.state.store(to as u8, Ordering::SeqCst);
        }
        from
    }

    fn state(&self) -> PoolState {
        PoolState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Gives an admitted job's slot back, and wakes `stop` if it was the
    /// last one out of a closed pool.
    fn release_slot(&self) {
        self.limiter.release();
        // SeqCst pairs with the state store in `close`/`terminate` and the
        // count in `drained`: either this side sees the pool closed and
        // wakes the waiter, or the waiter sees the count it left.
        if self.state() != PoolState::Run && self.limiter.running() == 0 {
            self.drained.notify_waiters();
        }
    }
}

/// Celery's eventlet `TaskPool` on tokio: green jobs under a resizable
/// limit, each killable by its [`JobId`], with exactly-once callbacks.
///
/// A cheap handle: clones share one pool. Dropping a clone never kills jobs;
/// killing is always explicit ([`TaskPool::terminate`],
/// [`TaskPool::terminate_job`]).
///
/// # Examples
///
/// ```
/// use greenpool::{job, TaskPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = TaskPool::builder().limit(2).build().unwrap();
/// pool.start().unwrap();
/// let a = pool.apply_async(job(async { 1 })).await.unwrap();
/// let b = pool.apply_async(job(async { 2 })).await.unwrap();
/// assert_eq!(a.await.completed().unwrap() + b.await.completed().unwrap(), 3);
/// pool.stop().await.unwrap();
/// assert!(!pool.active());
/// # }
/// ```
#[derive(Clone)]
pub struct TaskPool {
    inner: Arc<Inner>,
}

impl TaskPool {
    /// The pool cannot receive POSIX signals safely (Celery's `signal_safe`).
    pub const SIGNAL_SAFE: bool = false;
    /// The pool's jobs are green (Celery's `is_green`).
    pub const IS_GREEN: bool = true;
    /// Waiting for a job never blocks the process (Celery's
    /// `task_join_will_block`).
    pub const TASK_JOIN_WILL_BLOCK: bool = false;

    /// A new green timer: the seed's `TaskPool.Timer`, the timer class a
    /// worker uses for ETA tasks, heartbeats and time limits.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::TaskPool::new_timer();
    /// let fired = Arc::new(AtomicBool::new(false));
    /// let f = fired.clone();
    /// timer.call_after(Duration::from_secs(2), move || f.store(true, Ordering::SeqCst), 0).unwrap();
    /// tokio::time::sleep(Duration::from_secs(3)).await;
    /// assert!(fired.load(Ordering::SeqCst));
    /// # }
    /// ```
    pub fn new_timer() -> crate::Timer {
        crate::Timer::new()
    }

    /// A builder; see [`PoolBuilder`](crate::PoolBuilder).
    pub fn builder() -> crate::PoolBuilder {
        crate::PoolBuilder::new()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let limit = config.limit;
        TaskPool {
            inner: Arc::new(Inner {
                id: PoolId(NEXT_POOL.fetch_add(1, Ordering::Relaxed)),
                limiter: Limiter::new(Semaphore::new(limit), limit, Semaphore::MAX_PERMITS),
                config,
                jobs: JobMap::new(),
                state: AtomicU8::new(PoolState::NotStarted as u8),
                lifecycle: std::sync::Mutex::new(()),
                drained: tokio::sync::Notify::new(),
                next_job: AtomicU64::new(1),
                job_ended: tokio::sync::Notify::new(),
                killers: AtomicUsize::new(0),
                runtime: OnceLock::new(),
                counters: Counters::default(),
            }),
        }
    }

    /// This pool's id, the sender of its signals.
    pub fn id(&self) -> PoolId {
        self.inner.id
    }

    /// True if both handles are the same pool.
    pub fn ptr_eq(&self, other: &TaskPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// `signal_safe`: false.
    pub fn signal_safe(&self) -> bool {
        Self::SIGNAL_SAFE
    }

    /// `is_green`: true.
    pub fn is_green(&self) -> bool {
        Self::IS_GREEN
    }

    /// `task_join_will_block`: false.
    pub fn task_join_will_block(&self) -> bool {
        Self::TASK_JOIN_WILL_BLOCK
    }

    /// The free-form options given to the builder.
    pub fn options(&self) -> &std::collections::BTreeMap<String, String> {
        &self.inner.config.options
    }

    // ----- lifecycle -------------------------------------------------------

    /// Starts the pool on the current tokio runtime and sends
    /// [`POOL_STARTED`](signals::POOL_STARTED).
    ///
    /// # Errors
    ///
    /// [`StartError::NotStartable`] if the pool already started or was
    /// closed; [`StartError::NoRuntime`] outside a tokio runtime.
    pub fn start(&self) -> Result<(), StartError> {
        let handle = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let _ = self.inner.runtime.set(handle);
        let from = self
            .inner
            .transition(PoolState::Run, |s| s != PoolState::NotStarted);
        if from != PoolState::NotStarted {
            return Err(StartError::NotStartable(from));
        }
        signals::POOL_STARTED.send_robust(self.inner.id, &());
        Ok(())
    }

    /// The lifecycle state.
    pub fn state(&self) -> PoolState {
        self.inner.state()
    }

    /// True only while the pool runs (state `Run`).
    pub fn active(&self) -> bool {
        self.state() == PoolState::Run
    }

    /// True once the pool has started.
    pub fn did_start_ok(&self) -> bool {
        self.state() != PoolState::NotStarted && self.inner.runtime.get().is_some()
    }

    /// Refuses new jobs; running ones go on. Callers of `apply_async` still
    /// waiting for a slot get their jobs back at once.
    pub fn close(&self) {
        self.inner
            .transition(PoolState::Close, |s| s == PoolState::Terminate);
        self.inner.limiter.permits().close();
    }

    /// Waits until no admitted job is left (the pool must have left `Run`).
    async fn drained(&self) {
        loop {
            let notified = self.inner.drained.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a last job ending in between
            // still wakes this wait.
            notified.as_mut().enable();
            if self.inner.limiter.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Sends [`POOL_PRE_SHUTDOWN`](signals::POOL_PRE_SHUTDOWN), closes the
    /// pool, waits for every admitted job to end and its callback to run,
    /// then sends [`POOL_POST_SHUTDOWN`](signals::POOL_POST_SHUTDOWN). A
    /// pool that never started still sends both and returns.
    ///
    /// # Errors
    ///
    /// [`StopError::FromOwnJob`] when called from one of this pool's jobs.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits leaves the pool closed, its jobs
    /// running, and the post-shutdown signal unsent.
    pub async fn stop(&self) -> Result<(), StopError> {
        self.check_not_own_job()?;
        signals::POOL_PRE_SHUTDOWN.send_robust(self.inner.id, &());
        self.close();
        self.drained().await;
        self.inner.transition(PoolState::Terminate, |_| false);
        signals::POOL_POST_SHUTDOWN.send_robust(self.inner.id, &());
        Ok(())
    }

    /// Kills every job, running or not yet started (each gets a terminated
    /// outcome with the reason "pool terminated"), and returns when all
    /// have ended.
    ///
    /// # Errors
    ///
    /// [`StopError::FromOwnJob`] when called from one of this pool's jobs.
    ///
    /// # Cancel safety
    ///
    /// The kills are requested before the first `.await`; dropping the
    /// future only stops the wait.
    pub async fn terminate(&self) -> Result<(), StopError> {
        self.check_not_own_job()?;
        self.inner.transition(PoolState::Terminate, |_| false);
        self.inner.jobs.for_each(|_, slot| {
            slot.control.request_kill(Termination {
                signal: None,
                reason: TerminateReason::PoolTerminated,
            });
            if let Some(abort) = &slot.abort {
                abort.abort();
            }
        });
        self.inner.limiter.permits().close();
        self.drained().await;
        Ok(())
    }

    /// Not supported by this pool, as in Celery's eventlet pool.
    ///
    /// # Errors
    ///
    /// Always [`RestartError::NotSupported`].
    pub fn restart(&self) -> Result<(), RestartError> {
        Err(RestartError::NotSupported)
    }

    fn check_not_own_job(&self) -> Result<(), StopError> {
        let Some(current) = tokio::task::try_id() else {
            return Ok(());
        };
        let mut own = None;
        self.inner.jobs.for_each(|id, slot| {
            if slot.abort.as_ref().is_some_and(|a| a.id() == current) {
                own = Some(*id);
            }
        });
        match own {
            Some(id) => Err(StopError::FromOwnJob(id)),
            None => Ok(()),
        }
    }

    // ----- sizes -------------------------------------------------------------

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.inner.limiter.ledger().limit
    }

    /// The current limit (Celery's `num_processes`).
    pub fn num_processes(&self) -> usize {
        self.limit()
    }

    /// Jobs holding a slot.
    pub fn running(&self) -> usize {
        self.inner.limiter.ledger().running
    }

    /// `limit - running`: negative while a shrink waits for jobs to end.
    pub fn free(&self) -> isize {
        self.inner.limiter.ledger().free()
    }

    /// Jobs in the job map.
    pub fn job_count(&self) -> usize {
        self.inner.jobs.len()
    }

    /// Raises the limit by `n`; waiting applies may start at once. Returns
    /// the new limit.
    ///
    /// # Errors
    ///
    /// [`ResizeError::TooLarge`] past the largest limit; the limit is
    /// unchanged.
    pub fn grow(&self, n: usize) -> Result<usize, ResizeError> {
        self.inner.limiter.grow(n)
    }

    /// Lowers the limit by `n`. Running jobs are never interrupted: while
    /// more run than the new limit, [`free`](TaskPool::free) is negative and
    /// nothing new starts. Returns the new limit.
    ///
    /// # Errors
    ///
    /// [`ResizeError::BelowZero`] when `n` exceeds the limit; the limit is
    /// unchanged.
    pub fn shrink(&self, n: usize) -> Result<usize, ResizeError> {
        self.inner.limiter.shrink(n)
    }

    /// A snapshot in Celery's keys plus counters.
    pub fn info(&self) -> PoolInfo {
        let ledger = self.inner.limiter.ledger();
        let c = &self.inner.counters;
        PoolInfo {
            implementation: "greenpool:TaskPool",
            max_concurrency: ledger.limit,
            free_threads: ledger.free(),
            running_threads: ledger.running,
            state: self.state(),
            waiting: c.waiting.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            completed: c.ended.completed.load(Ordering::Relaxed),
            panicked: c.ended.panicked.load(Ordering::Relaxed),
            terminated: c.ended.terminated.load(Ordering::Relaxed),
            callback_panics: c.ended.callback_panics.load(Ordering::Relaxed),
        }
    }

    // ----- applying ----------------------------------------------------------

    /// Applies a job, waiting for a free slot when all are taken (unless
    /// the pool was built with `putlocks(false)`).
    ///
    /// The job is in the job map before it can run; its accept callback runs
    /// when it first runs, its result callback exactly once when it ends.
    ///
    /// # Errors
    ///
    /// [`ApplyError::NotRunning`] when the pool is not running, also when it
    /// closes while this call waits; [`ApplyError::Full`] without putlocks.
    /// Either way the job comes back, not run.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for a slot means the job was
    /// never applied: nothing runs and no callback fires.
    pub async fn apply_async<F, Fut, T, C, A>(&self, job: Job<F, T, C, A>) -> Applied<F, T, C, A>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        C: FnOnce(&Outcome<T>) + Send + 'static,
        A: FnOnce(JobId, Instant) + Send + 'static,
    {
        let state = self.inner.state();
        if state != PoolState::Run {
            return Err(ApplyError::NotRunning { state, job });
        }
        if !self.inner.config.putlocks {
            return self.try_apply_async(job);
        }
        // A free slot needs no waiting, and no waiting count.
        if let Ok(permit) = self.inner.limiter.permits().try_acquire() {
            return self.spawn(permit, job);
        }
        let acquired = {
            let _waiting = Waiting::enter(&self.inner.counters.waiting);
            self.inner.limiter.permits().acquire().await
        };
        match acquired {
            Ok(permit) => self.spawn(permit, job),
            Err(_) => Err(ApplyError::NotRunning {
                state: self.inner.state(),
                job,
            }),
        }
    }

    /// Applies a job if a slot is free, without waiting.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Full`] when every slot is taken;
    /// [`ApplyError::NotRunning`] when the pool is not running. The job
    /// comes back, not run.
    // The job comes back by value in the error, as in tokio's `SendError`.
    #[allow(clippy::result_large_err)]
    pub fn try_apply_async<F, Fut, T, C, A>(&self, job: Job<F, T, C, A>) -> Applied<F, T, C, A>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        C: FnOnce(&Outcome<T>) + Send + 'static,
        A: FnOnce(JobId, Instant) + Send + 'static,
    {
        let state = self.inner.state();
        if state != PoolState::Run {
            return Err(ApplyError::NotRunning { state, job });
        }
        match self.inner.limiter.permits().try_acquire() {
            Ok(permit) => self.spawn(permit, job),
            Err(TryAcquireError::NoPermits) => Err(ApplyError::Full(job)),
            Err(TryAcquireError::Closed) => Err(ApplyError::NotRunning {
                state: self.inner.state(),
                job,
            }),
        }
    }

    /// Admits a job on the permit it was given and spawns it.
    #[allow(clippy::result_large_err)]
    fn spawn<F, Fut, T, C, A>(
        &self,
        permit: tokio::sync::SemaphorePermit<'_>,
        job: Job<F, T, C, A>,
    ) -> Applied<F, T, C, A>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        C: FnOnce(&Outcome<T>) + Send + 'static,
        A: FnOnce(JobId, Instant) + Send + 'static,
    {
        let inner = &self.inner;
        // The slot now belongs to the job until `release_slot`.
        permit.forget();
        inner.limiter.admit();
        let id = JobId(inner.next_job.fetch_add(1, Ordering::Relaxed));
        if signals::APPLY.has_receivers() {
            let args = ApplyArgs {
                job_id: id,
                name: job.name.as_deref().map(str::to_owned),
                args: job.args.clone(),
            };
            signals::APPLY.send_robust(inner.id, &args);
        }
        let Some(runtime) = inner.runtime.get() else {
            inner.release_slot();
            return Err(ApplyError::NotRunning {
                state: inner.state(),
                job,
            });
        };
        // Slot (taken), then map entry, then the state check: see the
        // invariants.
        let cell = Arc::new(JobCell::<T>::new());
        inner.jobs.shard(id).insert(
            id,
            Slot {
                abort: None,
                control: cell.clone(),
            },
        );
        let state = inner.state();
        if state != PoolState::Run {
            inner.jobs.shard(id).remove(&id);
            inner.release_slot();
            return Err(ApplyError::NotRunning { state, job });
        }
        inner.counters.applied.fetch_add(1, Ordering::Relaxed);
        let Job {
            target,
            callback,
            accept_callback,
            limits,
            ..
        } = job;
        let guard = JobGuard {
            inner: Arc::clone(inner),
            id,
            callback,
            cell: Some(cell.clone()),
        };
        let ctx = JobContext::new(id, cell.clone());
        // Spawned outside the shard lock: a runtime that is shutting down
        // drops the future inside `spawn`, and its guard takes that lock.
        let task = runtime.spawn(run_job(guard, target, ctx, accept_callback, limits));
        if let Some(slot) = inner.jobs.shard(id).get_mut(&id) {
            // A hard kill that came before the handle existed is carried out
            // now; a graceful one has cancelled the token and its grace
            // timer will find the handle.
            if cell
                .kill()
                .is_some_and(|k| !k.signal.is_some_and(KillSignal::is_graceful))
            {
                task.abort();
            }
            slot.abort = Some(task.abort_handle());
        }
        Ok(JobHandle::new(id, cell, self.clone()))
    }

    // ----- killing -----------------------------------------------------------

    /// Kills a job by id and returns once it has ended and its callback has
    /// run.
    ///
    /// With no signal or [`KillSignal::Kill`], the job is aborted at its
    /// current `.await`. With [`KillSignal::Term`] or [`KillSignal::Int`],
    /// its token is cancelled first and the kill comes after the pool's
    /// grace period if the job is still there. An abort only schedules the
    /// kill, which lands at the job's next `.await`; a job that completes
    /// first keeps its own outcome ([`KillResult::Exited`]).
    ///
    /// An unknown or finished id is a no-op, reported as such. A job that
    /// kills itself gets [`KillResult::Requested`] at once.
    ///
    /// # Cancel safety
    ///
    /// The kill is requested before the first `.await` and carried out
    /// whether or not this future is polled again, grace period included.
    pub async fn terminate_job(&self, id: JobId, signal: Option<KillSignal>) -> KillResult {
        let graceful = signal.is_some_and(KillSignal::is_graceful);
        let control = {
            let shard = self.inner.jobs.shard(id);
            let Some(slot) = shard.get(&id) else {
                return if id.0 != 0 && id.0 < self.inner.next_job.load(Ordering::Relaxed) {
                    KillResult::AlreadyFinished
                } else {
                    KillResult::Unknown
                };
            };
            slot.control.request_kill(Termination {
                signal,
                reason: TerminateReason::Killed,
            });
            let own = tokio::task::try_id()
                .is_some_and(|cur| slot.abort.as_ref().is_some_and(|a| a.id() == cur));
            if own {
                if let Some(abort) = &slot.abort {
                    abort.abort();
                }
                return KillResult::Requested;
            }
            if graceful {
                slot.control.token().cancel();
            } else if let Some(abort) = &slot.abort {
                abort.abort();
            }
            Arc::clone(&slot.control)
        };
        if graceful {
            self.escalate_after_grace(id);
        }
        match self.wait_ended(&*control).await {
            true => KillResult::Killed,
            false => KillResult::Exited,
        }
    }

    /// Waits for a job to end; true if it ended killed.
    async fn wait_ended(&self, control: &dyn JobControl) -> bool {
        let _waiting = Waiting::enter(&self.inner.killers);
        loop {
            let notified = self.inner.job_ended.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so an end in between still wakes.
            notified.as_mut().enable();
            if let Some(killed) = control.ended() {
                return killed;
            }
            notified.await;
        }
    }

    /// Kills `id` after the grace period unless it has ended by then. A task
    /// of its own, so that the kill happens even if the caller goes away.
    fn escalate_after_grace(&self, id: JobId) {
        let Some(runtime) = self.inner.runtime.get() else {
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let grace = self.inner.config.term_grace;
        runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(inner) = weak.upgrade() {
                if let Some(abort) = inner.jobs.shard(id).get(&id).and_then(|s| s.abort.as_ref()) {
                    abort.abort();
                }
            }
        });
    }
}

impl fmt::Debug for TaskPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TaskPool");
        d.field("id", &self.inner.id)
            .field("state", &self.inner.state());
        match self.inner.limiter.try_ledger() {
            Some(ledger) => d
                .field("limit", &ledger.limit)
                .field("running", &ledger.running),
            None => d.field("limit", &"<locked>"),
        };
        d.finish()
    }
}

/// Counts a caller of `apply_async` while it waits, even if it is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Owns everything a job must give back, and gives it back exactly once:
/// on its last poll through [`JobGuard::finish`], or from its destructor
/// when the job's task is dropped (killed, time limit, runtime shutdown).
struct JobGuard<T: Send + 'static, C: FnOnce(&Outcome<T>)> {
    inner: Arc<Inner>,
    id: JobId,
    callback: Option<C>,
    /// The job's cell; taken when the guard has done its work.
    cell: Option<Arc<JobCell<T>>>,
}

impl<T: Send + 'static, C: FnOnce(&Outcome<T>)> JobGuard<T, C> {
    /// Ends the job: `None` means it was dropped before it finished.
    fn finish(&mut self, outcome: Option<Outcome<T>>) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        let inner = &self.inner;
        inner.jobs.shard(self.id).remove(&self.id);
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
                inner
                    .counters
                    .ended
                    .callback_panics
                    .fetch_add(1, Ordering::Relaxed);
                let info = PanicInfo::from_payload(&*payload);
                tracing::error!(job = %self.id, panic = %info, "result callback panicked");
                if inner.config.callbacks_propagate {
                    propagate = Some(payload);
                }
            }
        }
        cell.complete(outcome);
        // SeqCst pairs with the increment in `wait_ended`: a killer that
        // counted itself before this load is woken; one that counts itself
        // after sees the cell ended.
        if inner.killers.load(Ordering::SeqCst) > 0 {
            inner.job_ended.notify_waiters();
        }
        inner.release_slot();
        if let Some(payload) = propagate {
            std::panic::resume_unwind(payload);
        }
    }
}

impl<T: Send + 'static, C: FnOnce(&Outcome<T>)> Drop for JobGuard<T, C> {
    fn drop(&mut self) {
        self.finish(None);
    }
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
        guard: JobGuard<T, C>,
        #[pin]
        stage: Stage<F, Fut, T, A>,
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
            fut: unwind::CatchPanic<Fut>,
        },
        /// Running under time limits.
        Limited {
            fut: LimitedJob<T>,
        },
        /// Ended.
        Done,
    }
}

fn run_job<F, Fut, T, C, A>(
    guard: JobGuard<T, C>,
    target: F,
    ctx: JobContext,
    accept: Option<A>,
    limits: Option<Box<TimeLimits>>,
) -> RunJob<F, Fut, T, C, A>
where
    F: FnOnce(JobContext) -> Fut,
    T: Send + 'static,
    C: FnOnce(&Outcome<T>),
{
    RunJob {
        guard,
        stage: Stage::Start {
            target: Some(target),
            ctx: Some(ctx),
            accept,
            limits,
        },
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
                    if let Some(accept) = accept.take() {
                        if let Err(p) = unwind::call(|| accept(guard.id, Instant::now())) {
                            guard
                                .inner
                                .counters
                                .ended
                                .callback_panics
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::error!(job = %guard.id, panic = %p, "accept callback panicked");
                        }
                    }
                    let (Some(target), Some(ctx)) = (target.take(), ctx.take()) else {
                        debug_assert!(false, "a job starts once");
                        return Poll::Ready(());
                    };
                    match limits.take() {
                        Some(limits) => {
                            let fut: LimitedJob<T> = Box::pin(run_limited(target, ctx, *limits));
                            this.stage.set(Stage::Limited { fut });
                            continue;
                        }
                        None => match unwind::call_in_job(move || target(ctx)) {
                            Ok(fut) => {
                                this.stage.set(Stage::Running {
                                    fut: unwind::CatchPanic::new(fut),
                                });
                                continue;
                            }
                            // Building the job's future panicked.
                            Err(p) => Outcome::Panicked(p),
                        },
                    }
                }
                StageProj::Running { fut } => match fut.poll(cx) {
                    Poll::Ready(r) => into_outcome(r),
                    Poll::Pending => return Poll::Pending,
                },
                StageProj::Limited { fut } => match fut.as_mut().poll(cx) {
                    Poll::Ready(o) => o,
                    Poll::Pending => return Poll::Pending,
                },
                StageProj::Done => return Poll::Ready(()),
            };
            // The job's future is dropped before the guard reports.
            this.stage.set(Stage::Done);
            this.guard.finish(Some(outcome));
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

/// Runs the target under its soft and hard time limits.
async fn run_limited<F, Fut, T>(target: F, ctx: JobContext, limits: TimeLimits) -> Outcome<T>
where
    F: FnOnce(JobContext) -> Fut,
    Fut: Future<Output = T>,
{
    let start = Instant::now();
    let token = ctx.token().clone();
    let id = ctx.id();
    let work = unwind::catch_panic(async move { target(ctx).await });
    let mut work = std::pin::pin!(work);
    let soft_at = limits.soft.map(|d| start + d);
    let hard_at = limits.hard.map(|d| start + d);
    let mut soft_fired = false;
    let notify = |soft: bool, limit: Duration| {
        if let Some(cb) = &limits.callback {
            if let Err(p) = unwind::call(|| cb(soft, limit)) {
                tracing::error!(job = %id, panic = %p, "timeout callback panicked");
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            r = &mut work => return into_outcome(r),
            _ = tokio::time::sleep_until(hard_at.unwrap_or(start)), if hard_at.is_some() => {
                tracing::warn!(job = %id, "hard time limit exceeded; killing the job");
                notify(false, limits.hard.unwrap_or_default());
                return Outcome::Terminated(Termination {
                    signal: None,
                    reason: TerminateReason::TimeLimit,
                });
            }
            _ = tokio::time::sleep_until(soft_at.unwrap_or(start)), if soft_at.is_some() && !soft_fired => {
                soft_fired = true;
                tracing::warn!(job = %id, "soft time limit exceeded; cancelling the job's token");
                token.cancel();
                notify(true, limits.soft.unwrap_or_default());
            }
        }
    }
}
