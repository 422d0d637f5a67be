//! [`TaskPool`]: the pool's shared state, its sizes and its report. The
//! rest of its methods live beside this file, one concern each:
//! `state.rs` (lifecycle), `apply.rs` (admitting jobs), `killing.rs`
//! (`terminate_job`). A job's own task and its end are in `run_job.rs` and
//! `guard.rs`.
//!
//! # Invariants
//!
//! * A job is in the job map from before its task can run until its guard
//!   ends it; the guard removes it on every path (completion, panic, kill,
//!   time limit, runtime shutdown), after the job's callback ran, so the map
//!   never leaks and a killer never hears "already finished" too early.
//! * Every admitted job gets exactly one outcome: the guard's `finish` runs
//!   once, either from the job's last poll or from its destructor, and in
//!   both cases after the job's future was dropped.
//! * No kill is lost: a kill marks the job's entry under its shard lock,
//!   then moves `kill_epoch`, then wakes the task if its waker is in the
//!   entry. The task looks at its entry when it sees the epoch moved and,
//!   under that lock, when it first waits (see `kill_switch.rs`).
//! * Once the state leaves `Run`, no job is admitted. An applying task takes
//!   the job's slot (counted in the limiter's `running`), puts the job in
//!   the map, and only then reads the state; `close` and `terminate` write
//!   the state before they count `running` or walk the map. Both sides use
//!   `SeqCst`, so an apply that still reads `Run` came first: `stop` waits
//!   for it and `terminate` finds it in the map. One that reads anything
//!   else takes its job back out, tells any killer already waiting on it
//!   that it is gone, and gives its slot back.
//! * `stop` returns only after every admitted job's callback has run: a
//!   guard gives its slot back as its last step, and the last one to do so
//!   after the pool has closed wakes `stop`. (The slot count doubles as the
//!   count of jobs in flight, so no separate tracker is kept per job.)
//! * The limiter's own invariants are in `limiter.rs`; `free` is `limit -
//!   running`, negative while a shrink's debt is still being paid.

mod apply;
mod killing;
#[cfg(all(test, loom))]
mod loom_models;
mod state;

pub use crate::pool_state::PoolState;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::cache_padded::CachePadded;
use crate::error::ResizeError;
use crate::info::PoolInfo;
use crate::job_map::JobMap;
use crate::limiter::Limiter;

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

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// Every live pool by id, weakly: how a [`JobHandle`](crate::JobHandle)
/// finds its pool without holding a reference of its own (which would cost
/// two reference-count writes per job, on a line the workers share). Only
/// kills through a handle look here; a pool enters when it is built and
/// leaves when its last reference goes.
static POOLS: std::sync::Mutex<BTreeMap<u64, Weak<Inner>>> = std::sync::Mutex::new(BTreeMap::new());

fn pools() -> std::sync::MutexGuard<'static, BTreeMap<u64, Weak<Inner>>> {
    POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
pub(crate) struct Counters {
    waiting: AtomicUsize,
    /// Jobs that got an id and were then refused (a `close` raced their
    /// apply). Applied jobs are the ids handed out minus these, so that an
    /// admission counts nothing of its own.
    refused: AtomicU64,
    pub(crate) ended: CachePadded<EndCounters>,
}

impl Counters {
    /// Counts a job that got an id and was refused.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a result or accept callback that panicked.
    pub(crate) fn callback_panicked(&self) {
        self.ended.callback_panics.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub(crate) struct EndCounters {
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) terminated: AtomicU64,
    pub(crate) callback_panics: AtomicU64,
}

/// What every handle of one pool shares.
///
/// Aligned to 128 bytes, so that in its `Arc` the reference counts (which
/// the thread applying a job and the one ending another both change, per
/// job) sit on lines of their own, apart from the fields both read.
#[repr(align(128))]
pub(crate) struct Inner {
    pub(crate) id: PoolId,
    pub(crate) config: Config,
    /// The free slots; closed when the pool closes, so that waiting applies
    /// give their jobs back at once. Written per job by the applying and
    /// the ending side: lines of its own, apart from the fields both read.
    limiter: CachePadded<Limiter<Semaphore>>,
    /// JobId -> kill switch and shared cell.
    pub(crate) jobs: JobMap,
    /// The lifecycle state; see the invariants for its ordering.
    state: AtomicU8,
    /// Serialises state changes (start, close, stop, terminate).
    lifecycle: std::sync::Mutex<()>,
    /// Woken when the last job ends after the pool left `Run`.
    drained: tokio::sync::Notify,
    /// Next job id; ids start at 1 and are never reused. Written per job by
    /// the applying side: a line of its own.
    next_job: CachePadded<AtomicU64>,
    /// The runtime jobs are spawned on, set by `start`.
    runtime: OnceLock<Handle>,
    pub(crate) counters: Counters,
    /// Moves on every kill request: a job's task that sees it move looks
    /// at its map entry (see `run_job.rs`). Read on every poll, written
    /// rarely: a cache line of its own.
    pub(crate) kill_epoch: CachePadded<AtomicU64>,
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

    #[inline]
    fn state(&self) -> PoolState {
        PoolState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// The cancellation token of a job in the map, made on first use.
    pub(crate) fn job_token(
        &self,
        id: crate::JobId,
    ) -> Option<tokio_util::sync::CancellationToken> {
        self.jobs.shard(id).get_mut(&id).map(|slot| slot.token())
    }

    /// Moves the kill epoch; called after a kill is marked and before the
    /// job's task is woken.
    pub(crate) fn bump_kill_epoch(&self) {
        self.kill_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Gives an admitted job's slot back, and wakes `stop` if it was the
    /// last one out of a closed pool.
    #[inline]
    pub(crate) fn release_slot(&self) {
        self.limiter.release();
        // SeqCst pairs with the state store in `close`/`terminate` and the
        // count in `drained`: either this side sees the pool closed and
        // wakes the waiter, or the waiter sees the count it left.
        if self.state() != PoolState::Run && self.limiter.running() == 0 {
            self.drained.notify_waiters();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        pools().remove(&self.id.0);
    }
}

/// Celery's eventlet `TaskPool` on tokio: green jobs under a resizable
/// limit, each killable by its [`JobId`](crate::JobId), with exactly-once callbacks.
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
        let pool = TaskPool {
            inner: Arc::new(Inner {
                id: PoolId(NEXT_POOL.fetch_add(1, Ordering::Relaxed)),
                limiter: CachePadded::new(Limiter::new(
                    Semaphore::new(limit),
                    limit,
                    Semaphore::MAX_PERMITS,
                )),
                config,
                jobs: JobMap::new(limit),
                state: AtomicU8::new(PoolState::NotStarted as u8),
                lifecycle: std::sync::Mutex::new(()),
                drained: tokio::sync::Notify::new(),
                next_job: CachePadded::new(AtomicU64::new(1)),
                runtime: OnceLock::new(),
                counters: Counters::default(),
                kill_epoch: CachePadded::new(AtomicU64::new(0)),
            }),
        };
        pools().insert(pool.inner.id.0, Arc::downgrade(&pool.inner));
        pool
    }

    /// The live pool with this id, if there is one.
    pub(crate) fn by_id(id: PoolId) -> Option<TaskPool> {
        // The weak reference is upgraded after the lock is released: if
        // the upgrade were the last reference, dropping it would end the
        // pool, and `Inner::drop` takes this lock.
        let weak = pools().get(&id.0).cloned();
        weak.and_then(|w| w.upgrade())
            .map(|inner| TaskPool { inner })
    }

    /// The cancellation token of a job in the map, made on first use.
    pub(crate) fn job_token(
        &self,
        id: crate::JobId,
    ) -> Option<tokio_util::sync::CancellationToken> {
        self.inner.job_token(id)
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

    /// Jobs admitted so far: the ids handed out (they start at 1) minus
    /// the refused ones. A statistic like the other counters: a job that
    /// is being refused right now may count for a moment.
    fn applied(&self) -> u64 {
        let refused = self.inner.counters.refused.load(Ordering::Relaxed);
        let handed_out = self
            .inner
            .next_job
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        handed_out.saturating_sub(refused)
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
            applied: self.applied(),
            completed: c.ended.completed.load(Ordering::Relaxed),
            panicked: c.ended.panicked.load(Ordering::Relaxed),
            terminated: c.ended.terminated.load(Ordering::Relaxed),
            callback_panics: c.ended.callback_panics.load(Ordering::Relaxed),
        }
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
