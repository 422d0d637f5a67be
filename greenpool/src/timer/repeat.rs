//! [`Repeat`]: the bookkeeping of a series made by `Timer::call_repeatedly`.
//!
//! # Invariants
//!
//! - A series has at most one pending occurrence, whose key is `pending`;
//!   entering the series again replaces it. kombu keeps duplicates in its
//!   heap and skips them when they fire; replacing them keeps `queue()`
//!   exact, and the replaced occurrence would have fired at the same eta
//!   anyway (see the early-run rule in `driver.rs`).
//! - `pending` and `cancelled` change only under the timer's state lock, so
//!   the atomics need no ordering of their own (`Relaxed`); they are atomics
//!   only because the entry is shared with tasks that read them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::core::Core;
use super::queue::Key;

/// The bookkeeping of a repeating entry.
pub(crate) struct Repeat {
    /// Time between the end of one run and the next eta.
    pub(crate) interval: Duration,
    /// Priority of every occurrence.
    pub(crate) priority: i32,
    /// The timer the series belongs to; it is rescheduled only there.
    owner: Weak<Core>,
    /// Set once the series is cancelled (or cleared); it never runs again.
    cancelled: AtomicBool,
    /// Packed [`Key`] of the pending occurrence, or [`NO_KEY`].
    pending: AtomicU64,
    /// The timer's epoch when the series was last entered; a series entered
    /// before a `clear` or `stop` is no longer live.
    epoch: AtomicU64,
    /// Start of the last run that was not skipped.
    last_run: Mutex<Option<Instant>>,
}

/// `pending` value meaning "no occurrence in the queue".
const NO_KEY: u64 = u64::MAX;

impl Repeat {
    /// Bookkeeping for a new series on `owner`.
    pub(crate) fn new(owner: &Arc<Core>, interval: Duration, priority: i32) -> Repeat {
        Repeat {
            interval,
            priority,
            owner: Arc::downgrade(owner),
            cancelled: AtomicBool::new(false),
            pending: AtomicU64::new(NO_KEY),
            epoch: AtomicU64::new(0),
            last_run: Mutex::new(None),
        }
    }

    /// Whether the series belongs to the timer whose core is `core`.
    pub(crate) fn is_owned_by(&self, core: &Arc<Core>) -> bool {
        std::ptr::eq(self.owner.as_ptr(), Arc::as_ptr(core))
    }

    /// Whether the series was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Marks the series cancelled; true if it was live until now.
    /// Call under the timer's state lock.
    pub(crate) fn cancel(&self) -> bool {
        !self.cancelled.swap(true, Ordering::Relaxed)
    }

    /// Takes the key of the pending occurrence. Call under the state lock.
    pub(crate) fn take_pending(&self) -> Option<Key> {
        let packed = self.pending.swap(NO_KEY, Ordering::Relaxed);
        (packed != NO_KEY).then(|| Key::unpack(packed))
    }

    /// Records the key of the pending occurrence, entered in `epoch`.
    /// Call under the state lock.
    pub(crate) fn set_pending(&self, key: Key, epoch: u64) {
        self.pending.store(key.pack(), Ordering::Relaxed);
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The epoch the series was last entered in. Call under the state lock.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Forgets the pending occurrence if it is `key` (it just fired).
    /// Call under the state lock.
    pub(crate) fn clear_pending_if(&self, key: Key) {
        let _ =
            self.pending
                .compare_exchange(key.pack(), NO_KEY, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// kombu's early-run rule, applied at `now`.
    ///
    /// A run is due if the series never ran or if `interval` has passed
    /// since the last run; a due run becomes the last run. Returns `None`
    /// when due, else the eta of the remainder (`last run + interval`).
    pub(crate) fn check_due(&self, now: Instant) -> Option<Instant> {
        let mut last = self.last_run.lock().unwrap_or_else(PoisonError::into_inner);
        match *last {
            Some(prev) if now.saturating_duration_since(prev) < self.interval => {
                // Intervals are capped when the series is made, so the sum
                // fits; `now` is the harmless answer if it ever did not.
                Some(prev.checked_add(self.interval).unwrap_or(now))
            }
            _ => {
                *last = Some(now);
                None
            }
        }
    }
}
