//! The green [`Timer`]: kombu's timer API whose entries run as tokio tasks.
//!
//! A timer is a handle on a shared [`Core`](self::core::Core): a queue of
//! pending entries (a 4-ary heap over a slab, see `queue.rs`) and one driver
//! task (see `driver.rs`) that sleeps until the nearest deadline and spawns
//! each due entry as a task of its own. Entering is O(log n) and cancelling
//! O(1) amortised, under a short lock; a pending entry costs no task and no
//! sleep.
//!
//! Time is [`tokio::time::Instant`], so a paused tokio clock drives the timer
//! in tests.

mod cancel;
mod core;
mod driver;
mod entry;
mod error;
mod panic;
mod queue;
mod repeat;
mod scheduled;
mod tref;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use self::cancel::CancelResult;
pub use self::entry::Entry;
pub use self::error::TimerError;
pub use self::panic::{EntryPanic, ErrorHandler};
pub use self::scheduled::Scheduled;
pub use self::tref::TimerRef;

use self::core::Core;
use self::repeat::Repeat;

/// Longest repeat interval: far below what the clock can add to any instant
/// (about 34,800 years), so rescheduling never overflows.
const MAX_INTERVAL: Duration = Duration::from_secs(1 << 40);

/// A green timer with kombu's API: entries fire at their eta as tokio tasks.
///
/// The timer that Celery's worker uses for ETA and countdown tasks,
/// heartbeats and time limits (the pool's `Timer` attribute), usable on its
/// own as well.
///
/// - Entries with equal etas fire in priority order (lower value first),
///   then in the order they were entered. Each fires on a task of its own,
///   spawned in that order; on a current-thread runtime they also start in
///   that order.
/// - An eta in the past fires as soon as possible.
/// - An entry that panics goes to the `on_error` handler
///   ([`Timer::set_on_error`]), or is logged through `tracing` when there is
///   none; the timer goes on.
/// - One driver task serves the whole timer with one sleep for the nearest
///   deadline. It is spawned on the runtime of the first entry.
///
/// `Timer` is a cheap clone of an `Arc`; clones are the same timer. Dropping
/// the last clone stops the timer as [`Timer::stop`] does; entries that
/// capture a clone of their own timer keep it alive until they fire, are
/// cancelled, or the timer is cleared or stopped.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenpool::Timer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = Timer::new();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// for (name, secs) in [("b", 2), ("a", 1)] {
///     let tx = tx.clone();
///     timer
///         .call_after(Duration::from_secs(secs), move || { let _ = tx.send(name); }, 0)
///         .unwrap();
/// }
/// assert_eq!(timer.len(), 2);
/// assert_eq!(rx.recv().await, Some("a"));
/// assert_eq!(rx.recv().await, Some("b"));
/// # }
/// ```
#[derive(Clone)]
pub struct Timer {
    inner: Arc<Inner>,
}

/// Owned by the `Timer` clones only (never by the driver or the runs), so
/// that its `Drop` means "the last handle is gone".
struct Inner {
    core: Arc<Core>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.stop();
    }
}

impl Timer {
    /// Makes an empty timer. Its driver task starts with the first entry,
    /// on the runtime that entry is scheduled from.
    ///
    /// # Examples
    ///
    /// ```
    /// let timer = greenpool::Timer::new();
    /// assert!(timer.is_empty());
    /// ```
    pub fn new() -> Timer {
        Timer {
            inner: Arc::new(Inner { core: Core::new() }),
        }
    }

    fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// Calls `fun` at `eta` (kombu's `call_at`).
    ///
    /// # Errors
    ///
    /// [`TimerError::Stopped`] after [`Timer::stop`];
    /// [`TimerError::NoRuntime`] for the first entry outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let eta = Instant::now() + Duration::from_secs(10);
    /// timer.call_at(eta, || println!("ten seconds later"), 0).unwrap();
    /// assert_eq!(timer.queue()[0].eta, eta);
    /// # }
    /// ```
    pub fn call_at<F>(&self, eta: Instant, fun: F, priority: i32) -> Result<TimerRef, TimerError>
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.enter_at(&Entry::new(fun), eta, priority)
    }

    /// Calls `fun` after `delay` (kombu's `call_after`).
    ///
    /// # Errors
    ///
    /// As [`Timer::call_at`], and [`TimerError::TooLong`] when now plus
    /// `delay` does not fit the clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// timer.call_after(Duration::from_millis(250), || {}, 0).unwrap();
    /// assert_eq!(timer.len(), 1);
    /// # }
    /// ```
    pub fn call_after<F>(
        &self,
        delay: Duration,
        fun: F,
        priority: i32,
    ) -> Result<TimerRef, TimerError>
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.enter_after(&Entry::new(fun), delay, priority)
    }

    /// Calls `fun` every `interval`, first after one `interval`, following
    /// kombu's `call_repeatedly`.
    ///
    /// Each run is scheduled `interval` after the previous run ends. A run
    /// that comes early (less than `interval` since the last run started,
    /// for example after [`Timer::apply_entry`] or an earlier
    /// [`Timer::enter_at`] of the returned entry) is skipped and rescheduled
    /// for the remainder. A run that panics goes to `on_error` and the series
    /// goes on. Cancelling the returned reference stops the series, also
    /// from inside `fun`; so do [`Timer::clear`] and [`Timer::stop`]. A
    /// series has at most one pending occurrence.
    ///
    /// # Errors
    ///
    /// As [`Timer::call_at`]; [`TimerError::ZeroInterval`] for a zero
    /// `interval` and [`TimerError::TooLong`] for one over about 34,800
    /// years.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let tref = timer
    ///     .call_repeatedly(Duration::from_secs(1), move || { let _ = tx.send(()); }, 0)
    ///     .unwrap();
    /// for _ in 0..3 {
    ///     rx.recv().await.unwrap();
    /// }
    /// assert!(timer.cancel(&tref).was_pending());
    /// assert!(timer.is_empty());
    /// # }
    /// ```
    pub fn call_repeatedly<F>(
        &self,
        interval: Duration,
        fun: F,
        priority: i32,
    ) -> Result<TimerRef, TimerError>
    where
        F: Fn() + Send + Sync + 'static,
    {
        if interval.is_zero() {
            return Err(TimerError::ZeroInterval);
        }
        if interval > MAX_INTERVAL {
            return Err(TimerError::TooLong(interval));
        }
        let entry = Entry::repeating(Repeat::new(self.core(), interval, priority), fun);
        self.enter_after(&entry, interval, priority)
    }

    /// Schedules `entry` at `eta` (kombu's `enter_at`).
    ///
    /// The same entry may be entered more than once; each time is its own
    /// occurrence, except for a repeating entry, whose pending occurrence is
    /// moved to `eta`.
    ///
    /// # Errors
    ///
    /// As [`Timer::call_at`]; for a repeating entry also
    /// [`TimerError::ForeignEntry`] (made by another timer) and
    /// [`TimerError::SeriesCancelled`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let entry = greenpool::Entry::new(|| {});
    /// let a = timer.enter_at(&entry, Instant::now(), 0).unwrap();
    /// let b = timer.enter_at(&entry, Instant::now(), 0).unwrap();
    /// assert_eq!(timer.len(), 2);
    /// assert!(timer.cancel(&a).was_pending());
    /// assert_eq!(timer.len(), 1);
    /// # drop(b);
    /// # }
    /// ```
    pub fn enter_at(
        &self,
        entry: &Entry,
        eta: Instant,
        priority: i32,
    ) -> Result<TimerRef, TimerError> {
        let key = self.core().enter(entry, eta, priority)?;
        Ok(TimerRef::new(key, entry.clone()))
    }

    /// Schedules `entry` after `delay` (kombu's `enter_after`).
    ///
    /// # Errors
    ///
    /// As [`Timer::enter_at`], and [`TimerError::TooLong`] when now plus
    /// `delay` does not fit the clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let entry = greenpool::Entry::new(|| {});
    /// timer.enter_after(&entry, Duration::from_secs(3), 1).unwrap();
    /// assert_eq!(timer.queue()[0].priority, 1);
    /// # }
    /// ```
    pub fn enter_after(
        &self,
        entry: &Entry,
        delay: Duration,
        priority: i32,
    ) -> Result<TimerRef, TimerError> {
        let eta = Instant::now()
            .checked_add(delay)
            .ok_or(TimerError::TooLong(delay))?;
        self.enter_at(entry, eta, priority)
    }

    /// Runs `entry` now, on the calling task, as the timer would (kombu's
    /// `apply_entry`): a panic goes to `on_error`, and a repeating entry
    /// applies its early-run rule and reschedules itself.
    ///
    /// # Errors
    ///
    /// [`TimerError::Stopped`] after [`Timer::stop`] (the entry does not
    /// run); [`TimerError::ForeignEntry`] for a repeating entry made by
    /// another timer.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes drops the run where it is
    /// (an async entry stops at its current `.await`); a repeating entry is
    /// then not rescheduled.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&ran);
    /// let entry = greenpool::Entry::new(move || flag.store(true, Ordering::SeqCst));
    /// timer.apply_entry(&entry).await.unwrap();
    /// assert!(ran.load(Ordering::SeqCst));
    /// # }
    /// ```
    pub async fn apply_entry(&self, entry: &Entry) -> Result<(), TimerError> {
        let core = Arc::clone(self.core());
        if let Some(rep) = entry.repeat() {
            if !rep.is_owned_by(&core) {
                return Err(TimerError::ForeignEntry);
            }
        }
        if core.is_stopped() {
            return Err(TimerError::Stopped);
        }
        let epoch = core.epoch();
        core.fire(entry.clone(), epoch).await;
        Ok(())
    }

    /// Cancels what `tref` names: one pending occurrence, or a whole
    /// repeating series. Returns whether it was still pending (for a series:
    /// still live); cancelling something that fired or was cancelled already
    /// does nothing and returns [`CancelResult::NotPending`].
    ///
    /// An entry has fired once the timer handed it to its task; from then on
    /// cancelling it does not stop that run.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenpool::CancelResult;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let tref = timer.call_after(Duration::from_secs(1), || {}, 0).unwrap();
    /// assert_eq!(timer.cancel(&tref), CancelResult::Cancelled);
    /// assert!(timer.queue().is_empty());
    /// assert_eq!(timer.cancel(&tref), CancelResult::NotPending);
    /// # }
    /// ```
    pub fn cancel(&self, tref: &TimerRef) -> CancelResult {
        if self.core().cancel(tref.key, &tref.entry) {
            CancelResult::Cancelled
        } else {
            CancelResult::NotPending
        }
    }

    /// Cancels every pending entry (and the series among them); returns how
    /// many there were. The timer stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// timer.call_after(Duration::from_secs(1), || {}, 0).unwrap();
    /// timer.call_repeatedly(Duration::from_secs(1), || {}, 0).unwrap();
    /// assert_eq!(timer.clear(), 2);
    /// assert!(timer.is_empty());
    /// # }
    /// ```
    pub fn clear(&self) -> usize {
        self.core().clear()
    }

    /// Stops the timer: pending entries are dropped, no entry starts a run
    /// after this returns, and the driver task ends. Runs already under way
    /// finish. Further entries are refused with [`TimerError::Stopped`].
    /// Stopping twice is harmless.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// timer.call_after(Duration::from_secs(1), || unreachable!(), 0).unwrap();
    /// timer.stop();
    /// assert!(timer.is_stopped() && timer.is_empty());
    /// # }
    /// ```
    pub fn stop(&self) {
        self.core().stop();
    }

    /// Whether [`Timer::stop`] was called (or every handle dropped).
    ///
    /// # Examples
    ///
    /// See [`Timer::stop`].
    pub fn is_stopped(&self) -> bool {
        self.core().is_stopped()
    }

    /// The pending entries, each with its eta, priority and a reference,
    /// in firing order (a snapshot: O(n log n)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let s = Duration::from_secs(1);
    /// timer.call_after(s, || {}, 5).unwrap();
    /// timer.call_after(s, || {}, -5).unwrap();
    /// let order: Vec<i32> = timer.queue().iter().map(|s| s.priority).collect();
    /// assert_eq!(order, [-5, 5]);
    /// # }
    /// ```
    pub fn queue(&self) -> Vec<Scheduled> {
        let mut snapshot = self.core().lock().queue.snapshot();
        snapshot.sort_unstable_by_key(|pending| pending.deadline);
        snapshot
            .into_iter()
            .map(|pending| Scheduled {
                eta: pending.eta,
                priority: pending.deadline.priority,
                tref: TimerRef::new(pending.key, pending.entry),
            })
            .collect()
    }

    /// Number of pending entries.
    ///
    /// # Examples
    ///
    /// See [`Timer::enter_at`].
    pub fn len(&self) -> usize {
        self.core().lock().queue.len()
    }

    /// Whether no entry is pending.
    ///
    /// # Examples
    ///
    /// See [`Timer::new`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the `on_error` handler, called with each panic of an entry (see
    /// [`ErrorHandler`] for how it is called). Replaces any earlier handler.
    ///
    /// # Examples
    ///
    /// See [`EntryPanic`].
    pub fn set_on_error<F>(&self, handler: F)
    where
        F: Fn(EntryPanic) + Send + Sync + 'static,
    {
        self.core().set_on_error(Some(Arc::new(handler)));
    }

    /// Whether `self` and `other` are clones of the same timer.
    ///
    /// # Examples
    ///
    /// ```
    /// let timer = greenpool::Timer::new();
    /// assert!(timer.ptr_eq(&timer.clone()));
    /// assert!(!timer.ptr_eq(&greenpool::Timer::new()));
    /// ```
    pub fn ptr_eq(&self, other: &Timer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Default for Timer {
    fn default() -> Timer {
        Timer::new()
    }
}

impl fmt::Debug for Timer {
    /// Never blocks: prints `<locked>` while another thread holds the state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Timer");
        match self.core().try_peek() {
            Some((len, stopped)) => d.field("len", &len).field("stopped", &stopped),
            None => d.field("state", &format_args!("<locked>")),
        };
        d.finish()
    }
}
