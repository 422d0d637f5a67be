//! [`Core`]: the state a timer shares with its driver task and with the
//! tasks its entries run on.
//!
//! # Invariants
//!
//! - Every change to the queue, the epoch, the stopped flag and the
//!   bookkeeping of repeating entries happens under the `state` lock, which
//!   is never held across an `.await` nor while user code runs.
//! - Entries taken out of the queue are dropped after the lock is released:
//!   dropping a closure may drop a `Timer` clone, which may stop the timer,
//!   which takes the lock again.
//! - Once `stopped` is set the queue is empty and stays empty, and no run
//!   that checks the flag afterwards calls its entry.
//! - `epoch` grows on every `clear` and `stop`; a repeating run started in
//!   an older epoch does not reschedule.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use futures::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::entry::Entry;
use super::error::TimerError;
use super::panic::{EntryPanic, ErrorHandler};
use super::queue::{Key, Queue};

/// Shared state of one timer.
pub(crate) struct Core {
    /// Queue and flags; see the module invariants.
    state: Mutex<State>,
    /// Wakes the driver when the nearest deadline moves earlier or the timer
    /// stops. `notify_one` keeps a permit, so a wake sent while the driver
    /// is busy is not lost.
    pub(crate) wake: Notify,
    /// The `on_error` handler; read once per panicking run.
    on_error: RwLock<Option<ErrorHandler>>,
    /// True while a driver task exists. Its task clears it when it goes,
    /// also when the runtime it ran on shuts down, so that the next entry
    /// starts a new driver on the runtime it is scheduled from.
    pub(crate) driver: AtomicBool,
}

/// The part of [`Core`] behind the lock.
pub(crate) struct State {
    /// Pending entries.
    pub(crate) queue: Queue,
    /// Bumped by `clear` and `stop`.
    pub(crate) epoch: u64,
    /// Set once by `stop`.
    pub(crate) stopped: bool,
}

impl Core {
    /// A timer with no entries and no driver yet.
    pub(crate) fn new() -> Arc<Core> {
        Arc::new(Core {
            state: Mutex::new(State {
                queue: Queue::new(),
                epoch: 0,
                stopped: false,
            }),
            wake: Notify::new(),
            on_error: RwLock::new(None),
            driver: AtomicBool::new(false),
        })
    }

    /// Locks the state; a poisoned lock is still usable because no user
    /// code runs under it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Non-blocking look at the state, for `Debug`.
    pub(crate) fn try_peek(&self) -> Option<(usize, bool)> {
        match self.state.try_lock() {
            Ok(st) => Some((st.queue.len(), st.stopped)),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let st = p.into_inner();
                Some((st.queue.len(), st.stopped))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Schedules `entry` at `eta`; a repeating entry's pending occurrence is
    /// replaced.
    pub(crate) fn enter(
        self: &Arc<Self>,
        entry: &Entry,
        eta: Instant,
        priority: i32,
    ) -> Result<Key, TimerError> {
        if let Some(rep) = entry.repeat() {
            if !rep.is_owned_by(self) {
                return Err(TimerError::ForeignEntry);
            }
        }
        let mut st = self.lock();
        if st.stopped {
            return Err(TimerError::Stopped);
        }
        if entry.repeat().is_some_and(|rep| rep.is_cancelled()) {
            return Err(TimerError::SeriesCancelled);
        }
        self.start_driver()?;
        let (key, replaced) = self.insert_locked(&mut st, entry, eta, priority)?;
        drop(st);
        drop(replaced);
        Ok(key)
    }

    /// Reschedules a repeating entry after a run that began in `epoch`,
    /// unless the series was cancelled, cleared or stopped meanwhile.
    pub(crate) fn reschedule(self: &Arc<Self>, entry: &Entry, eta: Instant, epoch: u64) {
        let Some(rep) = entry.repeat() else {
            return;
        };
        let mut st = self.lock();
        if st.stopped || st.epoch != epoch || rep.is_cancelled() {
            return;
        }
        match self.insert_locked(&mut st, entry, eta, rep.priority) {
            Ok((_, replaced)) => {
                drop(st);
                drop(replaced);
            }
            Err(err) => {
                drop(st);
                tracing::error!(error = %err, "timer could not reschedule a repeating entry");
            }
        }
    }

    /// Inserts under the lock and wakes the driver if the entry became the
    /// nearest deadline. Returns the key and any replaced occurrence, to be
    /// dropped after unlocking.
    fn insert_locked(
        &self,
        st: &mut State,
        entry: &Entry,
        eta: Instant,
        priority: i32,
    ) -> Result<(Key, Option<Entry>), TimerError> {
        let mut replaced = None;
        if let Some(rep) = entry.repeat() {
            if let Some(old) = rep.take_pending() {
                replaced = st.queue.remove(old);
            }
        }
        let (key, first) = match st.queue.insert(eta, priority, entry.clone()) {
            Ok(inserted) => inserted,
            Err(_) => return Err(TimerError::Full),
        };
        if let Some(rep) = entry.repeat() {
            rep.set_pending(key, st.epoch);
        }
        if first {
            self.wake.notify_one();
        }
        Ok((key, replaced))
    }

    /// Spawns the driver on the current runtime unless one is running.
    /// Called under the state lock; a driver dropped inside `spawn` (its
    /// runtime shutting down) only clears the flag, which takes no lock.
    fn start_driver(self: &Arc<Self>) -> Result<(), TimerError> {
        if self.driver.load(Ordering::SeqCst) {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| TimerError::NoRuntime)?;
        if self.driver.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        handle.spawn(super::driver::drive(Arc::clone(self)));
        Ok(())
    }

    /// Cancels the occurrence `key` of `entry`, or the whole series of a
    /// repeating entry; true if something was still pending or live.
    pub(crate) fn cancel(self: &Arc<Self>, key: Key, entry: &Entry) -> bool {
        let mut st = self.lock();
        let (was, removed) = match entry.repeat() {
            Some(rep) if rep.is_owned_by(self) => {
                // Live: not cancelled, and entered since the last clear or
                // stop (a run under way then does not reschedule).
                let live = !st.stopped && rep.epoch() == st.epoch;
                let was = rep.cancel() && live;
                let removed = rep.take_pending().and_then(|k| st.queue.remove(k));
                (was, removed)
            }
            Some(_) => (false, None),
            None => {
                let ours = st.queue.get(key).is_some_and(|e| e.ptr_eq(entry));
                let removed = if ours { st.queue.remove(key) } else { None };
                (removed.is_some(), removed)
            }
        };
        drop(st);
        drop(removed);
        was
    }

    /// Removes every pending entry and stops the series among them.
    pub(crate) fn clear(&self) -> usize {
        let mut st = self.lock();
        st.epoch += 1;
        let drained = st.queue.drain();
        for entry in &drained {
            if let Some(rep) = entry.repeat() {
                rep.cancel();
                let _ = rep.take_pending();
            }
        }
        drop(st);
        drained.len()
    }

    /// Stops the timer for good; returns how many entries were pending.
    pub(crate) fn stop(&self) -> usize {
        let mut st = self.lock();
        st.stopped = true;
        st.epoch += 1;
        let drained = st.queue.drain();
        for entry in &drained {
            if let Some(rep) = entry.repeat() {
                rep.cancel();
                let _ = rep.take_pending();
            }
        }
        drop(st);
        self.wake.notify_one();
        drained.len()
    }

    /// Whether the timer was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Sets the `on_error` handler.
    pub(crate) fn set_on_error(&self, handler: Option<ErrorHandler>) {
        *self
            .on_error
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handler;
    }

    /// Runs `entry` once on the current task; a panic goes to `on_error`.
    pub(crate) async fn call(&self, entry: &Entry) {
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| entry.start())) {
            Ok(None) => Ok(()),
            Ok(Some(fut)) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(payload) => Err(payload),
        };
        if let Err(payload) = outcome {
            self.report(payload);
        }
    }

    /// Hands a panic to `on_error`, or logs it when there is no handler.
    fn report(&self, payload: Box<dyn Any + Send + 'static>) {
        let handler = self
            .on_error
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let panic = EntryPanic::new(payload);
        match handler {
            Some(handler) => {
                if std::panic::catch_unwind(AssertUnwindSafe(|| handler(panic))).is_err() {
                    tracing::error!("timer on_error handler panicked; the timer goes on");
                }
            }
            None => tracing::error!(message = panic.message(), "timer entry panicked"),
        }
    }
}
