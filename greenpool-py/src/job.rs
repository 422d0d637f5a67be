//! One applied Python task: its calls and its state machine. The `Job`
//! handle Python gets back from `Pool.apply` is `PyJob` in `pool.rs`,
//! beside the pool it calls back into.
//!
//! Exactly one report per job is settled here. The runner of the job (a
//! thread, or an event loop for a coroutine) and anything that kills it (a
//! `terminate_job`, the hard time limit, a pool `terminate`, a handle's
//! `terminate`) race through [`Phase`] under the job's lock: the runner
//! claims the report by moving `Running` to `Reporting` once the target (or
//! the task's coroutine) returned; a kill claims it by moving any earlier
//! phase to `Killed`. Only the claimer reports. On a thread, an exception is
//! raised into it only while it is `Running`, under the same lock, and the
//! thread clears any exception not yet taken before it leaves `Running`: so
//! no exception meant for a task ever lands in a callback or in another
//! task. On a loop, a kill cancels the coroutine's asyncio task (the
//! cancellation lands at its current `await`) and the soft limit throws
//! `SoftTimeLimitExceeded` there; the loop side is `green.rs`.
//!
//! Lock order: a job's lock, then the GIL. Threads holding the GIL take the
//! lock with `lock_py_attached`, which lets the GIL go while it waits.

use std::ops::DerefMut;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::oneshot;

use crate::hooks::{Hooks, Raise};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Applied; not yet on a thread.
    Waiting,
    /// Its accept callback is running on a thread.
    Accepting,
    /// Its target is running.
    Running(Runner),
    /// The target returned; the thread reports the result.
    Reporting,
    /// A kill claimed the job; the kill reports it.
    Killed,
}

/// Where a running job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runner {
    /// On the OS thread with this `threading.get_ident()`.
    Thread(u64),
    /// As a coroutine on one of the pool's event loops.
    Loop,
}

/// A job handed to its runner (a thread or a loop), and how the runner says
/// it is done with it.
#[derive(Debug)]
pub(crate) struct WorkItem {
    pub(crate) job: Arc<JobShared>,
    pub(crate) done: oneshot::Sender<()>,
}

/// A job's mutable state.
#[derive(Debug)]
pub(crate) struct JobState {
    pub(crate) phase: Phase,
    /// The pid the core gave the job when it was admitted.
    pub(crate) pid: Option<u64>,
    /// The signal of a requested kill, for its report.
    pub(crate) kill_signal: Option<i32>,
    /// Report a kill through the hooks' `defer` (Celery announces a
    /// terminated task itself right after `terminate_job` returns).
    pub(crate) defer_kill_report: bool,
    /// The one report has been made (or the job was dropped unrun).
    pub(crate) reported: bool,
    /// An exception was raised into the job's thread.
    pub(crate) raised: bool,
    /// SIGUSR1 was delivered (Celery sends it twice: `terminate_job`, then
    /// the handle's `terminate`; the task gets one).
    pub(crate) usr1: bool,
    /// A loop job's driver (`greenpool._loop.Driver`), whose thread-safe
    /// `kill()` and `soft()` reach its coroutine, while it runs.
    pub(crate) driver: Option<Py<PyAny>>,
    /// A kill cancelled the job's coroutine, which has not ended yet.
    pub(crate) cancelling: bool,
    /// Threads waiting in `wait_reported`.
    pub(crate) waiters: u32,
}

/// The Python calls of one job.
#[derive(Debug)]
pub(crate) struct Calls {
    pub(crate) target: Py<PyAny>,
    pub(crate) args: Py<PyTuple>,
    pub(crate) kwargs: Option<Py<PyDict>>,
    pub(crate) callback: Option<Py<PyAny>>,
    pub(crate) error_callback: Option<Py<PyAny>>,
    pub(crate) accept_callback: Option<Py<PyAny>>,
    pub(crate) timeout_callback: Option<Py<PyAny>>,
}

/// Counters shared by the jobs and the threads of one pool.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Threads whose job was killed while its target ran, and that have not
    /// come back from it yet.
    pub(crate) abandoned: AtomicUsize,
    /// Threads ever abandoned.
    pub(crate) abandoned_total: AtomicU64,
    /// Soft time limits and SIGUSR1s raised into tasks.
    pub(crate) soft_raised: AtomicU64,
    /// Kills raised into running tasks.
    pub(crate) kills_raised: AtomicU64,
    /// Coroutines cancelled by a kill that have not ended yet (their slot
    /// is already free).
    pub(crate) cancelling: AtomicUsize,
    /// Coroutines ever cancelled by a kill.
    pub(crate) cancelled_total: AtomicU64,
    /// Coroutine tasks running now (begun, not finished).
    pub(crate) coroutines: AtomicUsize,
}

/// How a kill ended a job, for its report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum KillHow {
    /// A signal (`terminate_job`, `terminate`): Celery's `Terminated`.
    Signal(i32),
    /// The hard time limit, in seconds: Celery's `TimeLimitExceeded`.
    TimeLimit(f64),
}

/// One applied job, shared by its handle, the core's job and its thread.
#[derive(Debug)]
pub(crate) struct JobShared {
    state: Mutex<JobState>,
    reported: Condvar,
    pub(crate) calls: Calls,
    pub(crate) soft: Option<Duration>,
    pub(crate) hard: Option<Duration>,
    /// Runs as a coroutine on an event loop instead of on a thread.
    pub(crate) green: bool,
    /// What names the job in logs (Celery's task name and id), if known.
    pub(crate) label: Option<Py<PyAny>>,
}

impl JobShared {
    pub(crate) fn new(calls: Calls, soft: Option<Duration>, hard: Option<Duration>) -> Self {
        JobShared {
            state: Mutex::new(JobState {
                phase: Phase::Waiting,
                pid: None,
                kill_signal: None,
                defer_kill_report: false,
                reported: false,
                raised: false,
                usr1: false,
                driver: None,
                cancelling: false,
                waiters: 0,
            }),
            reported: Condvar::new(),
            calls,
            soft,
            hard,
            green: false,
            label: None,
        }
    }

    /// Makes the job a coroutine task, named by `label` in logs.
    pub(crate) fn on_loop(mut self, label: Option<Py<PyAny>>) -> Self {
        self.green = true;
        self.label = label;
        self
    }

    /// Locks the state without the GIL (never wait for the GIL with it held
    /// elsewhere: the lock comes first).
    pub(crate) fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the state from a thread that holds the GIL: at once, keeping
    /// the GIL, when the lock is free; otherwise with the GIL let go while
    /// waiting (the holder may be waiting for the GIL: lock, then GIL).
    pub(crate) fn lock_py(&self, py: Python<'_>) -> MutexGuard<'_, JobState> {
        match self.state.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => self
                .state
                .lock_py_attached(py)
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    pub(crate) fn pid(&self) -> Option<u64> {
        self.lock().pid
    }

    /// True once the job was killed (so it must not start).
    pub(crate) fn is_killed(&self) -> bool {
        self.lock().phase == Phase::Killed
    }

    fn mark_reported(&self, py: Python<'_>) {
        let mut st = self.lock_py(py);
        self.set_reported(st.deref_mut());
    }

    /// Marks the report made, waking the waiters of `wait_reported` (a
    /// futex wake is a system call: made only when someone waits).
    fn set_reported(&self, st: &mut JobState) {
        st.reported = true;
        if st.waiters > 0 {
            self.reported.notify_all();
        }
    }

    /// Marks a job that will never run nor report (refused at apply).
    pub(crate) fn mark_dropped(&self) {
        let mut st = self.lock();
        st.phase = Phase::Killed;
        self.set_reported(st.deref_mut());
    }

    /// True once the job's one report was made.
    pub(crate) fn is_reported(&self) -> bool {
        self.lock().reported
    }

    /// Waits, without the GIL, until the report was made or `timeout` passed.
    pub(crate) fn wait_reported(&self, timeout: Option<Duration>) -> bool {
        let mut st = self.lock();
        if st.reported {
            return true;
        }
        st.waiters += 1;
        let mut st = match timeout {
            None => self
                .reported
                .wait_while(st, |s| !s.reported)
                .unwrap_or_else(PoisonError::into_inner),
            Some(t) => {
                self.reported
                    .wait_timeout_while(st, t, |s| !s.reported)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        st.waiters -= 1;
        st.reported
    }

    // ----- on the job's thread ------------------------------------------------

    /// Runs the job on the calling thread (`ident`): accept callback,
    /// target, then the report. Returns false when the job was killed while
    /// its target ran: the thread is abandoned and must not run other jobs.
    pub(crate) fn run(&self, py: Python<'_>, hooks: &Hooks, ident: u64, stats: &Stats) -> bool {
        if !self.begin(py, hooks, Runner::Thread(ident), None) {
            return true;
        }
        let kwargs = self.calls.kwargs.as_ref().map(|k| k.bind(py));
        let result = self
            .calls
            .target
            .bind(py)
            .call(self.calls.args.bind(py), kwargs)
            .map(Bound::unbind);
        {
            let mut st = self.lock_py(py);
            // Nothing is raised into this thread once it left `Running`, and
            // nothing raised before may land in a callback.
            if st.raised {
                hooks.clear(py, ident);
            }
            if st.phase == Phase::Killed {
                drop(st);
                stats.abandoned.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            st.phase = Phase::Reporting;
        }
        self.report(py, hooks, result);
        true
    }

    /// Starts the job on its runner: skips a request Celery revoked while
    /// it waited for its slot (Celery announces it), else calls the accept
    /// callback and moves to `Running`. Returns false when the job must not
    /// run (revoked, or killed meanwhile; the kill reports it).
    pub(crate) fn begin(
        &self,
        py: Python<'_>,
        hooks: &Hooks,
        runner: Runner,
        driver: Option<Py<PyAny>>,
    ) -> bool {
        let pid = {
            let mut st = self.lock_py(py);
            if st.phase != Phase::Waiting {
                return false;
            }
            st.phase = Phase::Accepting;
            st.pid.unwrap_or_default()
        };
        if let Some(accept) = &self.calls.accept_callback {
            if hooks.revoked(py, accept) {
                let mut st = self.lock_py(py);
                if st.phase == Phase::Accepting {
                    st.phase = Phase::Killed;
                    self.set_reported(st.deref_mut());
                }
                return false;
            }
            let now = hooks.monotonic(py);
            if let Err(e) = accept.call1(py, (pid, now)) {
                e.write_unraisable(py, Some(accept.bind(py)));
            }
        }
        let mut st = self.lock_py(py);
        if st.phase == Phase::Killed {
            return false;
        }
        st.phase = Phase::Running(runner);
        st.driver = driver;
        true
    }

    /// The coroutine of a loop job returned or raised: claims the report
    /// (`Running` to `Reporting`), so a later kill finds it ended. Returns
    /// false when a kill claimed it first (the coroutine's outcome is
    /// dropped).
    pub(crate) fn settle(&self, py: Python<'_>) -> bool {
        let mut st = self.lock_py(py);
        match st.phase {
            Phase::Running(Runner::Loop) => {
                st.phase = Phase::Reporting;
                st.driver = None;
                true
            }
            Phase::Reporting => true,
            _ => false,
        }
    }

    /// The driver of a loop job ended with `result`: reports it, unless a
    /// kill claimed the job (then the outcome is dropped).
    pub(crate) fn finish(
        &self,
        py: Python<'_>,
        hooks: &Hooks,
        stats: &Stats,
        result: PyResult<Py<PyAny>>,
    ) {
        {
            let mut st = self.lock_py(py);
            st.driver = None;
            if st.cancelling {
                st.cancelling = false;
                stats.cancelling.fetch_sub(1, Ordering::Relaxed);
            }
            match st.phase {
                Phase::Running(_) => st.phase = Phase::Reporting,
                Phase::Reporting => {}
                Phase::Waiting | Phase::Accepting | Phase::Killed => return,
            }
        }
        self.report(py, hooks, result);
    }

    /// Reports the target's result or failure: the one report of a job
    /// whose runner claimed it.
    fn report(&self, py: Python<'_>, hooks: &Hooks, result: PyResult<Py<PyAny>>) {
        match result {
            Ok(value) => call_reporting(py, self.calls.callback.as_ref(), value),
            Err(err) => match hooks.failure(py, err) {
                Ok(einfo) => self.report_failure(py, einfo),
                Err(e) => e.write_unraisable(py, None),
            },
        }
        self.mark_reported(py);
    }

    /// Routes a failure record: the error callback, else the result callback
    /// (as Celery's `apply_target` does).
    fn report_failure(&self, py: Python<'_>, einfo: Py<PyAny>) {
        let to = self
            .calls
            .error_callback
            .as_ref()
            .or(self.calls.callback.as_ref());
        call_reporting(py, to, einfo);
    }

    // ----- kills ----------------------------------------------------------------

    /// Claims the report for a kill, raising into the thread if the target
    /// is running. Returns false when the job had already ended its own way.
    /// Call without the GIL held (takes the lock, then the GIL if needed).
    pub(crate) fn claim_kill(&self, hooks: &Hooks, stats: &Stats) -> bool {
        let mut st = self.lock();
        match st.phase {
            Phase::Reporting | Phase::Killed => false,
            Phase::Waiting | Phase::Accepting => {
                st.phase = Phase::Killed;
                true
            }
            Phase::Running(Runner::Loop) => {
                st.phase = Phase::Killed;
                st.cancelling = true;
                stats.cancelling.fetch_add(1, Ordering::Relaxed);
                stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
                if let Some(driver) = st.driver.take() {
                    Python::attach(|py| call_driver(py, &driver, "kill"));
                }
                true
            }
            Phase::Running(Runner::Thread(ident)) => {
                st.phase = Phase::Killed;
                st.raised = true;
                stats.abandoned.fetch_add(1, Ordering::Relaxed);
                stats.abandoned_total.fetch_add(1, Ordering::Relaxed);
                stats.kills_raised.fetch_add(1, Ordering::Relaxed);
                Python::attach(|py| hooks.raise_in(py, ident, Raise::Kill));
                true
            }
        }
    }

    /// Reports a kill this caller claimed (see [`JobShared::claim_kill`]).
    /// Call without the GIL held.
    pub(crate) fn report_kill(&self, hooks: &Hooks, how: KillHow) {
        let defer = {
            let st = self.lock();
            st.defer_kill_report
        };
        Python::attach(|py| {
            match how {
                KillHow::TimeLimit(secs) => match &self.calls.timeout_callback {
                    // Celery's `on_timeout(False, secs)` reports the task
                    // (result, events, ack) by itself.
                    Some(cb) => {
                        if let Err(e) = cb.call1(py, (false, secs)) {
                            e.write_unraisable(py, Some(cb.bind(py)));
                        }
                    }
                    None => match hooks.time_limit(py, secs) {
                        Ok(einfo) => self.report_failure(py, einfo),
                        Err(e) => e.write_unraisable(py, None),
                    },
                },
                KillHow::Signal(signum) => match hooks.terminated(py, signum) {
                    Ok(einfo) => {
                        let to = self
                            .calls
                            .error_callback
                            .as_ref()
                            .or(self.calls.callback.as_ref());
                        match (to, defer) {
                            (Some(to), true) => {
                                if let Err(e) = hooks.defer(py, to, einfo) {
                                    e.write_unraisable(py, None);
                                }
                            }
                            _ => call_reporting(py, to, einfo),
                        }
                    }
                    Err(e) => e.write_unraisable(py, None),
                },
            }
            self.mark_reported(py);
        });
    }

    /// Reports a job whose thread ended without reporting (its work item
    /// was dropped, or the core's job panicked). No-op when reported.
    pub(crate) fn report_lost_if_unreported(&self, hooks: &Hooks, why: &str) {
        {
            let mut st = self.lock();
            match st.phase {
                Phase::Reporting | Phase::Killed => return,
                Phase::Waiting | Phase::Accepting | Phase::Running(_) => {
                    st.phase = Phase::Killed;
                }
            }
        }
        Python::attach(|py| {
            match hooks.lost(py, why) {
                Ok(einfo) => self.report_failure(py, einfo),
                Err(e) => e.write_unraisable(py, None),
            }
            self.mark_reported(py);
        });
    }

    /// Soft time limit or SIGUSR1: raises `SoftTimeLimitExceeded` into the
    /// task if its target is running. Call without the GIL held.
    pub(crate) fn raise_soft(&self, hooks: &Hooks, stats: &Stats) -> bool {
        let mut st = self.lock();
        match st.phase {
            Phase::Running(Runner::Thread(ident)) => {
                st.raised = true;
                stats.soft_raised.fetch_add(1, Ordering::Relaxed);
                Python::attach(|py| hooks.raise_in(py, ident, Raise::Soft));
                true
            }
            Phase::Running(Runner::Loop) => match &st.driver {
                Some(driver) => {
                    stats.soft_raised.fetch_add(1, Ordering::Relaxed);
                    Python::attach(|py| call_driver(py, driver, "soft"));
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// SIGUSR1: raises `SoftTimeLimitExceeded` into the running task, once
    /// per job. Call without the GIL held.
    pub(crate) fn raise_usr1(&self, hooks: &Hooks, stats: &Stats) -> bool {
        {
            let mut st = self.lock();
            if st.usr1 {
                return true;
            }
            if matches!(st.phase, Phase::Running(_)) {
                st.usr1 = true;
            }
        }
        self.raise_soft(hooks, stats)
    }

    /// Calls the timeout callback with `soft = true`.
    pub(crate) fn notify_soft(&self, secs: f64) {
        if let Some(cb) = &self.calls.timeout_callback {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (true, secs)) {
                    e.write_unraisable(py, Some(cb.bind(py)));
                }
            });
        }
    }

    /// Records the pid the core gave the job.
    pub(crate) fn set_pid(&self, pid: u64) {
        self.lock().pid = Some(pid);
    }

    /// Records the signal of a kill about to be requested.
    pub(crate) fn set_kill(&self, signum: i32, defer: bool) {
        let mut st = self.lock();
        st.kill_signal.get_or_insert(signum);
        st.defer_kill_report = defer;
    }

    /// The signal recorded for a kill, if any.
    pub(crate) fn kill_signal(&self) -> Option<i32> {
        self.lock().kill_signal
    }
}

/// Calls a loop job's driver's thread-safe `kill()` or `soft()`; a failure
/// is reported as unraisable.
fn call_driver(py: Python<'_>, driver: &Py<PyAny>, method: &str) {
    if let Err(e) = driver.call_method0(py, method) {
        e.write_unraisable(py, Some(driver.bind(py)));
    }
}

/// Calls a result or error callback; its exception is reported as
/// unraisable (the pool goes on).
fn call_reporting(py: Python<'_>, to: Option<&Py<PyAny>>, value: Py<PyAny>) {
    if let Some(cb) = to {
        if let Err(e) = cb.call1(py, (value,)) {
            e.write_unraisable(py, Some(cb.bind(py)));
        }
    }
}
