//! The event loops that run coroutine tasks: one or a few OS threads owned
//! here, each running an asyncio (or uvloop) loop through the Python half
//! (`greenpool/_loop.py`, reached by the hooks' `run_loop`).
//!
//! Jobs reach a loop without the GIL: the core's job pushes its work item
//! on the loop's queue and, when no wake-up is pending, writes one byte to
//! the loop's socket pair; the loop watches the other end (`add_reader`)
//! and takes every queued item at once (`LoopHandle.take`). The order that
//! makes this lossless: a submitter pushes, then sets `wake_pending`; the
//! loop clears `wake_pending`, then takes the queue. An item pushed after
//! the take finds the flag clear and writes a new byte.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;

use crate::error::Error;
use crate::green::GreenJob;
use crate::hooks::Hooks;
use crate::job::{JobShared, Stats, WorkItem};
use crate::release::{Release, Releaser};

/// How long `start` waits for a loop to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a loop's thread is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Starting,
    Ready,
    Failed(String),
    Ended,
}

/// One loop: its queue, its wake-up socket pair and its Python runner.
#[derive(Debug)]
struct Slot {
    index: usize,
    queue: Mutex<Vec<(Arc<JobShared>, Release)>>,
    wake_pending: AtomicBool,
    waker: UnixStream,
    reader: UnixStream,
    /// The Python runner (`greenpool._loop.LoopRunner`), once ready.
    runner: Mutex<Option<Py<PyAny>>>,
    status: Mutex<Status>,
    changed: Condvar,
}

impl Slot {
    fn new(index: usize) -> std::io::Result<Self> {
        let (waker, reader) = UnixStream::pair()?;
        waker.set_nonblocking(true)?;
        reader.set_nonblocking(true)?;
        Ok(Slot {
            index,
            queue: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            waker,
            reader,
            runner: Mutex::new(None),
            status: Mutex::new(Status::Starting),
            changed: Condvar::new(),
        })
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_status(&self, status: Status) {
        *self.status() = status;
        self.changed.notify_all();
    }

    fn push(&self, item: (Arc<JobShared>, Release)) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            // A full socket buffer means wake-ups are pending already.
            let _ = (&self.waker).write(&[1]);
        }
    }

    fn take(&self) -> Vec<(Arc<JobShared>, Release)> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.wake_pending.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The loops of one pool.
#[derive(Debug, Default)]
pub(crate) struct Loops {
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Frees the slots of the loops' finished jobs (`release.rs`).
    releaser: Arc<Releaser>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
}

impl Loops {
    fn slots(&self) -> MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `n` loops, each on a thread of its own, and waits until each
    /// runs (or one failed to start: its error, e.g. uvloop asked for and
    /// not installed). Call without the GIL.
    pub(crate) fn start(
        &self,
        n: usize,
        hooks: &Arc<Hooks>,
        stats: &Arc<Stats>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), Error> {
        self.releaser.start(runtime);
        let mut started = Vec::with_capacity(n);
        for index in 0..n {
            let slot = Arc::new(Slot::new(index).map_err(|e| Error::Runtime(e.to_string()))?);
            let thread_slot = Arc::clone(&slot);
            let thread_state = LoopState {
                hooks: Arc::clone(hooks),
                stats: Arc::clone(stats),
                releaser: Arc::clone(&self.releaser),
            };
            let thread = std::thread::Builder::new()
                .name(format!("greenpool-loop-{index}"))
                .spawn(move || loop_main(thread_slot, thread_state))
                .map_err(|e| Error::Runtime(e.to_string()))?;
            lock(&self.threads).push(thread);
            started.push(slot);
        }
        // Kept before waiting, so that `close` stops them if one fails.
        *self.slots() = started.clone();
        for slot in &started {
            let status = slot.status();
            let (status, _) = slot
                .changed
                .wait_timeout_while(status, START_TIMEOUT, |s| *s == Status::Starting)
                .unwrap_or_else(PoisonError::into_inner);
            match &*status {
                Status::Ready => {}
                Status::Starting => {
                    return Err(Error::Loop(
                        "an event loop did not start within 30 s".to_owned(),
                    ))
                }
                Status::Failed(why) => return Err(Error::Loop(why.clone())),
                Status::Ended => {
                    return Err(Error::Loop("an event loop ended as it started".to_owned()))
                }
            }
        }
        Ok(())
    }

    /// Hands a coroutine job to a loop (round robin); call it on the core's
    /// runtime. With no loop running the item is dropped: its job reports
    /// lost.
    pub(crate) fn submit(&self, item: WorkItem) {
        let slot = {
            let slots = self.slots();
            if slots.is_empty() {
                return;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed) % slots.len();
            Arc::clone(&slots[i])
        };
        slot.push((item.job, self.releaser.hold(item.done)));
    }

    /// How many loops run.
    pub(crate) fn count(&self) -> usize {
        self.slots().len()
    }

    /// Stops every loop: each waits up to `timeout` for its coroutines to
    /// end (killed ones unwinding), cancels what is left, and closes; then
    /// their threads are joined. Call without the GIL.
    pub(crate) fn close(&self, timeout: Duration) {
        let slots = std::mem::take(&mut *self.slots());
        let runners: Vec<Py<PyAny>> = slots
            .iter()
            .filter_map(|s| lock(&s.runner).take())
            .collect();
        if !runners.is_empty() {
            Python::attach(|py| {
                for runner in &runners {
                    if let Err(e) = runner.call_method1(py, "stop", (timeout.as_secs_f64(),)) {
                        e.write_unraisable(py, Some(runner.bind(py)));
                    }
                }
                drop(runners);
            });
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            let _ = thread.join();
        }
        self.releaser.close();
        for slot in slots {
            // Items queued after the loops stopped: their jobs report lost.
            drop(slot.take());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a loop's thread and its jobs use of the pool: the Python hooks,
/// the counters and the releaser of finished jobs' slots (not the pool's
/// whole state, which owns the loops).
#[derive(Debug, Clone)]
struct LoopState {
    hooks: Arc<Hooks>,
    stats: Arc<Stats>,
    releaser: Arc<Releaser>,
}

/// One loop's thread: runs the Python loop until it is stopped.
fn loop_main(slot: Arc<Slot>, state: LoopState) {
    Python::attach(|py| {
        let hooks = Arc::clone(&state.hooks);
        let handle = LoopHandle {
            slot: Arc::clone(&slot),
            state,
        };
        let ran = Py::new(py, handle).and_then(|h| hooks.run_loop(py, h.into_any()));
        if let Err(e) = ran {
            let ready = *slot.status() == Status::Ready;
            if ready {
                e.write_unraisable(py, None);
            } else {
                slot.set_status(Status::Failed(e.to_string()));
            }
        }
    });
    let mut status = slot.status();
    if !matches!(*status, Status::Failed(_)) {
        *status = Status::Ended;
    }
    drop(status);
    slot.changed.notify_all();
}

/// A loop's native half, for its Python runner.
#[pyclass(module = "greenpool._greenpool", frozen)]
pub(crate) struct LoopHandle {
    slot: Arc<Slot>,
    state: LoopState,
}

#[pymethods]
impl LoopHandle {
    /// The loop's number (0, 1, ...).
    #[getter]
    fn index(&self) -> usize {
        self.slot.index
    }

    /// The file descriptor to watch (`loop.add_reader`): readable when jobs
    /// are queued.
    #[getter]
    fn fd(&self) -> i32 {
        self.slot.reader.as_raw_fd()
    }

    /// The loop runs: `runner` (with a thread-safe `stop(timeout)`) is what
    /// the pool stops it with.
    fn ready(&self, runner: Py<PyAny>) {
        *lock(&self.slot.runner) = Some(runner);
        self.slot.set_status(Status::Ready);
    }

    /// Every job queued for this loop, in order.
    fn take(&self) -> Vec<GreenJob> {
        self.slot
            .take()
            .into_iter()
            .map(|(job, release)| {
                GreenJob::new(
                    job,
                    release,
                    Arc::clone(&self.state.hooks),
                    Arc::clone(&self.state.stats),
                    Arc::clone(&self.state.releaser),
                )
            })
            .collect()
    }
}
