//! The driver task of a timer and the runs it starts.
//!
//! One task per timer sleeps on one [`Sleep`] until the nearest deadline,
//! then hands every due entry to a task of its own (`tokio::spawn`, in
//! firing order) and sleeps again. Entries never get a task while pending.
//! A driver whose runtime shuts down clears the timer's driver flag as it
//! is dropped, so the timer is not tied to the first runtime that used it.
//!
//! [`Sleep`]: tokio::time::Sleep

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::core::Core;
use super::entry::Entry;

/// Most entries fired per lock; the driver yields between batches so that a
/// million due entries neither hold the lock nor the worker for long.
const BATCH: usize = 1024;

/// Clears the driver flag when the driver goes, however it goes.
struct Alive(Arc<Core>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.driver.store(false, Ordering::SeqCst);
    }
}

/// The driver task; its flag is cleared when it ends or is dropped, even
/// unpolled.
pub(crate) fn drive(core: Arc<Core>) -> impl Future<Output = ()> + Send {
    let alive = Alive(Arc::clone(&core));
    async move {
        let _alive = alive;
        run(core).await;
    }
}

/// The driver loop; returns once the timer is stopped.
async fn run(core: Arc<Core>) {
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut due: Vec<Entry> = Vec::new();
    loop {
        let (epoch, next) = {
            let mut st = core.lock();
            if st.stopped {
                return;
            }
            let now = Instant::now();
            while due.len() < BATCH {
                let Some((key, entry)) = st.queue.pop_due(now) else {
                    break;
                };
                if let Some(rep) = entry.repeat() {
                    rep.clear_pending_if(key);
                }
                due.push(entry);
            }
            (st.epoch, st.queue.next_eta())
        };
        let more = due.len() == BATCH;
        for entry in due.drain(..) {
            tokio::spawn(Arc::clone(&core).fire(entry, epoch));
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        match next {
            Some(eta) => {
                sleep.as_mut().reset(eta);
                tokio::select! {
                    () = &mut sleep => {}
                    () = core.wake.notified() => {}
                }
            }
            None => core.wake.notified().await,
        }
    }
}

impl Core {
    /// One run of `entry`, handed out in `epoch`.
    ///
    /// A repeating entry follows kombu: the run is skipped if it comes less
    /// than `interval` after the start of the last run, and rescheduled for
    /// the remainder; otherwise it runs and is rescheduled `interval` after
    /// the run ends. Either way the reschedule comes after the run (so that
    /// cancelling from inside the run stops the series) and is dropped if
    /// the series was cancelled, cleared or stopped meanwhile.
    pub(crate) async fn fire(self: Arc<Self>, entry: Entry, epoch: u64) {
        if self.is_stopped() {
            return;
        }
        let Some(rep) = entry.repeat() else {
            self.call(&entry).await;
            return;
        };
        if rep.is_cancelled() {
            return;
        }
        let next = match rep.check_due(Instant::now()) {
            None => {
                self.call(&entry).await;
                Instant::now().checked_add(rep.interval)
            }
            remainder => remainder,
        };
        if let Some(eta) = next {
            self.reschedule(&entry, eta, epoch);
        }
    }

    /// The current epoch (see the `core` invariants).
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }
}
