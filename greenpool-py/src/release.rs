//! Freeing the slots of finished coroutine jobs.
//!
//! A core job ends (and its slot frees) when its `done` sender fires. A
//! loop thread finishing thousands of coroutines a second would wake the
//! core's runtime from outside once per job: a system call each, made
//! while holding the GIL (and one that may hand the CPU to the woken
//! thread while every Python thread waits for the GIL). Instead:
//!
//! - each job handed to a loop holds a [`Release`], counted as outstanding
//!   from the moment the core's runtime hands it over (`Loops::submit`, on
//!   a runtime thread);
//! - a finished job's `Release` goes into one shared batch;
//! - a task on the runtime drains the batch every [`TICK`] while jobs keep
//!   finishing; after [`IDLE_TICKS`] drains that found nothing (or when no
//!   job is outstanding) it parks, and the next finished job wakes it.
//!
//! So under load a slot is freed at most a tick after its job finished,
//! with no wake-up from the loop; when jobs finish rarely, each wakes the
//! task at once. No release is lost: a `Release` fires when drained or when
//! dropped (a job that never ran), and the count it holds goes with it. A
//! parking task marks itself parked, then looks at the batch again before
//! waiting; a releaser batches first, then wakes a task marked parked
//! (`Notify` keeps a wake that comes before the wait).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// How long the draining task waits between two drains while jobs are
/// outstanding: the most a finished job's slot waits to be freed.
const TICK: Duration = Duration::from_micros(500);

/// Empty drains in a row (about 10 ms) after which the draining task parks.
const IDLE_TICKS: u32 = 20;

/// The shared batch, the count of outstanding jobs and the draining task's
/// wake-up.
#[derive(Debug, Default)]
pub(crate) struct Releaser {
    batch: Mutex<Vec<Release>>,
    outstanding: AtomicUsize,
    parked: AtomicBool,
    wake: Notify,
    /// Set while the draining task runs; otherwise releases fire at once.
    running: AtomicBool,
}

/// The right to free one job's slot: fires (frees it) when dropped.
#[derive(Debug)]
pub(crate) struct Release {
    done: Option<oneshot::Sender<()>>,
    releaser: Arc<Releaser>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        self.releaser.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Releaser {
    fn batch(&self) -> MutexGuard<'_, Vec<Release>> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the draining task on `runtime`.
    pub(crate) fn start(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        self.running.store(true, Ordering::SeqCst);
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let mut idle = 0;
            while this.running.load(Ordering::SeqCst) {
                idle = if this.drain() { 0 } else { idle + 1 };
                if idle < IDLE_TICKS && this.outstanding.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(TICK).await;
                    continue;
                }
                this.parked.store(true, Ordering::SeqCst);
                if !this.batch().is_empty() {
                    this.parked.store(false, Ordering::SeqCst);
                    continue;
                }
                this.wake.notified().await;
                idle = 0;
            }
        });
    }

    /// Takes a job's `done` sender as it goes to a loop.
    pub(crate) fn hold(self: &Arc<Self>, done: oneshot::Sender<()>) -> Release {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        Release {
            done: Some(done),
            releaser: Arc::clone(self),
        }
    }

    /// Frees every batched slot; true when there were some.
    fn drain(&self) -> bool {
        let batch = std::mem::take(&mut *self.batch());
        !batch.is_empty()
    }

    /// Frees a finished job's slot: within a tick, on the runtime.
    pub(crate) fn release(&self, release: Release) {
        if !self.running.load(Ordering::SeqCst) {
            return; // dropped here: fires at once
        }
        self.batch().push(release);
        if self.parked.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
        if !self.running.load(Ordering::SeqCst) {
            // Closed meanwhile: nothing drains any more.
            self.drain();
        }
    }

    /// Stops the draining task and frees what is batched at once.
    pub(crate) fn close(&self) {
        self.running.store(false, Ordering::SeqCst);
        self.wake.notify_one();
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("a test runtime")
    }

    #[test]
    fn every_release_fires_whether_the_task_is_busy_or_parked() {
        let rt = runtime();
        let releaser = Arc::new(Releaser::default());
        releaser.start(rt.handle());
        for round in 0..50 {
            let (holds, receivers): (Vec<_>, Vec<_>) = (0..round % 7 + 1)
                .map(|_| {
                    let (tx, rx) = oneshot::channel();
                    let held = rt.block_on(async { releaser.hold(tx) });
                    (held, rx)
                })
                .unzip();
            for held in holds {
                releaser.release(held);
            }
            rt.block_on(async {
                for rx in receivers {
                    assert_eq!(rx.await, Ok(()));
                }
            });
        }
        assert_eq!(releaser.outstanding.load(Ordering::SeqCst), 0);
        releaser.close();
    }

    #[test]
    fn a_dropped_release_fires_and_is_no_longer_outstanding() {
        let releaser = Arc::new(Releaser::default());
        let (tx, mut rx) = oneshot::channel();
        let held = releaser.hold(tx);
        assert_eq!(releaser.outstanding.load(Ordering::SeqCst), 1);
        drop(held);
        assert_eq!(rx.try_recv(), Ok(()));
        assert_eq!(releaser.outstanding.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn before_start_and_after_close_releases_fire_at_once() {
        let releaser = Arc::new(Releaser::default());
        let (tx, mut rx) = oneshot::channel();
        releaser.release(releaser.hold(tx));
        assert_eq!(rx.try_recv(), Ok(()));
        releaser.close();
        let (tx, mut rx) = oneshot::channel();
        releaser.release(releaser.hold(tx));
        assert_eq!(rx.try_recv(), Ok(()));
    }
}
