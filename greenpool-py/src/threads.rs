//! The OS threads that run Python tasks: created on demand up to what the
//! core admits, each with a small stack, waiting for work with the GIL
//! released, and leaving after an idle timeout.
//!
//! The core's limiter bounds how many jobs hold a slot, so the threads in
//! use never exceed the limit plus the abandoned ones (threads whose job
//! was killed while a C call blocked them; they leave as soon as the call
//! returns, and are replaced meanwhile).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;

use crate::hooks::Hooks;
use crate::job::{Stats, WorkItem};

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<WorkItem>,
    /// Threads that will take the next items: waiting for one, or done
    /// with their job and on their way back.
    available: usize,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    queue: Mutex<Queue>,
    work: Condvar,
    /// Signalled when a thread leaves.
    left: Condvar,
    stack_size: usize,
    idle_timeout: Duration,
    hooks: Arc<Hooks>,
    stats: Arc<Stats>,
    alive: AtomicUsize,
    started: AtomicU64,
}

/// The thread pool of one `Pool`.
#[derive(Debug, Clone)]
pub(crate) struct Threads {
    inner: Arc<Inner>,
}

/// A snapshot for `info()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadCounts {
    pub(crate) alive: usize,
    pub(crate) idle: usize,
    pub(crate) queued: usize,
    pub(crate) started: u64,
}

impl Threads {
    pub(crate) fn new(
        hooks: Arc<Hooks>,
        stats: Arc<Stats>,
        stack_size: usize,
        idle_timeout: Duration,
    ) -> Self {
        Threads {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
                left: Condvar::new(),
                stack_size,
                idle_timeout,
                hooks,
                stats,
                alive: AtomicUsize::new(0),
                started: AtomicU64::new(0),
            }),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job for a thread, starting one if none is idle. Called
    /// without the GIL. A closed pool drops the item (its job reports lost).
    pub(crate) fn submit(&self, item: WorkItem) {
        let spawn = {
            let mut q = self.queue();
            if q.closed {
                return;
            }
            q.items.push_back(item);
            let spawn = q.items.len() > q.available;
            if spawn {
                q.available += 1;
            }
            spawn
        };
        if !spawn {
            self.inner.work.notify_one();
            return;
        }
        let inner = Arc::clone(&self.inner);
        inner.alive.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("greenpool-task".to_owned())
            .stack_size(self.inner.stack_size)
            .spawn(move || thread_main(inner));
        match spawned {
            Ok(_) => {
                self.inner.started.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.inner.alive.fetch_sub(1, Ordering::Relaxed);
                self.queue().available -= 1;
                // The item stays queued for the next thread that frees up;
                // with none alive, it is dropped and its job reports lost.
                tracing::error!(error = %e, "could not start a task thread");
                if self.inner.alive.load(Ordering::Relaxed) == 0 {
                    let dropped: Vec<_> = self.queue().items.drain(..).collect();
                    drop(dropped);
                }
            }
        }
    }

    /// Counts for `info()`.
    pub(crate) fn counts(&self) -> ThreadCounts {
        let q = self.queue();
        ThreadCounts {
            alive: self.inner.alive.load(Ordering::Relaxed),
            idle: q.available.saturating_sub(q.items.len()),
            queued: q.items.len(),
            started: self.inner.started.load(Ordering::Relaxed),
        }
    }

    /// Lets every idle thread go and waits (up to `timeout`) until every
    /// thread has left, abandoned ones included (a thread still inside a
    /// blocking call when Python exits would take the GIL from a finalizing
    /// interpreter). Call without the GIL.
    pub(crate) fn close(&self, timeout: Duration) {
        let mut q = self.queue();
        q.closed = true;
        let dropped: Vec<_> = q.items.drain(..).collect();
        drop(q);
        drop(dropped);
        self.inner.work.notify_all();
        let q = self.queue();
        let _ = self
            .inner
            .left
            .wait_timeout_while(q, timeout, |_| self.inner.alive.load(Ordering::Relaxed) > 0);
    }
}

impl Inner {
    /// The next item, or None after the idle timeout or on close. The
    /// caller is counted in `available` and leaves it here.
    fn next(&self) -> Option<WorkItem> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(item) = q.items.pop_front() {
                q.available -= 1;
                return Some(item);
            }
            if q.closed {
                q.available -= 1;
                return None;
            }
            let (back, waited) = self
                .work
                .wait_timeout(q, self.idle_timeout)
                .unwrap_or_else(PoisonError::into_inner);
            q = back;
            if waited.timed_out() && q.items.is_empty() {
                q.available -= 1;
                return None;
            }
        }
    }

    /// Counts a thread done with its job as available again.
    fn back(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .available += 1;
    }
}

/// One task thread: attached to Python for its whole life, detached while
/// it waits for work.
fn thread_main(inner: Arc<Inner>) {
    Python::attach(|py| {
        let ident = match inner.hooks.get_ident(py) {
            Ok(ident) => ident,
            Err(e) => {
                e.write_unraisable(py, None);
                return;
            }
        };
        loop {
            let waiting = Arc::clone(&inner);
            let Some(item) = py.detach(move || waiting.next()) else {
                break;
            };
            let usable = item.job.run(py, &inner.hooks, ident, &inner.stats);
            if usable {
                // Before the slot frees, so the next job finds this thread.
                inner.back();
            }
            let _ = item.done.send(());
            if !usable {
                break;
            }
        }
    });
    inner.alive.fetch_sub(1, Ordering::Relaxed);
    // Taken so that a `close` between its check and its wait sees this.
    let q = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
    drop(q);
    inner.left.notify_all();
}
