//! `greenpool._greenpool.Pool`: the engine behind `greenpool.celery.TaskPool`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::core::{Core, KillEnd, Shared};
use crate::hooks::Hooks;
use crate::job::{Calls, JobShared, KillHow, Stats};
use crate::loops::Loops;
use crate::seconds;
use crate::threads::Threads;

/// SIGUSR1: raises `SoftTimeLimitExceeded` in the task, as the prefork pool does.
const SIGUSR1: i32 = 10;
/// SIGTERM: the signal Celery sends when none is named.
const SIGTERM: i32 = 15;

/// The pool's state, shared with its job handles.
#[derive(Debug)]
pub(crate) struct PoolInner {
    core: Core,
    shared: Arc<Shared>,
    /// How many event loops run coroutine jobs.
    loops: usize,
}

impl PoolInner {
    /// Kills one job (see `Pool.terminate_job`). Takes the GIL-holding
    /// caller's `py` and lets the GIL go while it waits.
    pub(crate) fn kill_job(
        &self,
        py: Python<'_>,
        job: &Arc<JobShared>,
        signal: Option<i32>,
        defer: bool,
    ) -> &'static str {
        let signum = signal.unwrap_or(SIGTERM);
        let shared = &self.shared;
        py.detach(|| {
            if signum == SIGUSR1 {
                return if job.raise_usr1(&shared.hooks, &shared.stats) {
                    "signalled"
                } else {
                    "not-running"
                };
            }
            job.set_kill(signum, defer);
            match job.pid() {
                Some(pid) => match self.core.kill(pid) {
                    KillEnd::Killed => "killed",
                    KillEnd::Exited => "exited",
                    KillEnd::Unknown => "unknown",
                },
                // Not admitted yet: it never starts, and reports now.
                None => {
                    if job.claim_kill(&shared.hooks, &shared.stats) {
                        job.report_kill(&shared.hooks, KillHow::Signal(signum));
                        "killed"
                    } else {
                        "exited"
                    }
                }
            }
        })
    }
}

/// A pool of OS threads running Python callables, admitted by the greenpool
/// core's limiter, killable by pid, with soft and hard time limits.
///
/// `Pool(limit, hooks, stack_size=1 MiB, idle_timeout=30.0)`; `hooks` is
/// `greenpool.celery.Hooks()`. Most users want `greenpool.celery.TaskPool`.
#[pyclass(module = "greenpool._greenpool", frozen)]
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    /// Delivers SIGUSR1 to `job` through the hooks' `defer` (the worker's
    /// event loop), by way of a handle's `terminate`.
    fn defer_usr1(&self, py: Python<'_>, job: Arc<JobShared>) -> PyResult<()> {
        let handle = Py::new(
            py,
            PyJob {
                job,
                pool: Arc::clone(&self.inner),
            },
        )?;
        let terminate = handle.getattr(py, "terminate")?;
        let signum = SIGUSR1.into_pyobject(py)?.into_any().unbind();
        self.inner.shared.hooks.defer(py, &terminate, signum)
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (limit, hooks, stack_size=1 << 20, idle_timeout=30.0, loops=1))]
    fn new(
        limit: i64,
        hooks: Bound<'_, PyAny>,
        stack_size: usize,
        idle_timeout: f64,
        loops: usize,
    ) -> PyResult<Self> {
        let hooks = Arc::new(Hooks::new(hooks)?);
        let stats = Arc::new(Stats::default());
        let idle = seconds::limit(Some(idle_timeout)).unwrap_or(Duration::from_secs(30));
        let threads = Threads::new(
            Arc::clone(&hooks),
            Arc::clone(&stats),
            stack_size.max(64 << 10),
            idle,
        );
        let shared = Arc::new(Shared {
            hooks,
            stats,
            threads,
            loops: Loops::default(),
            jobs: Mutex::new(HashMap::new()),
        });
        let core = Core::new(limit, Arc::clone(&shared))?;
        Ok(Pool {
            inner: Arc::new(PoolInner {
                core,
                shared,
                loops,
            }),
        })
    }

    /// Starts the pool, its event loops first (an error when one cannot
    /// start, e.g. uvloop chosen and not installed).
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        let runtime = inner.core.handle()?;
        let loops = py.detach(|| {
            inner.shared.loops.start(
                inner.loops,
                &inner.shared.hooks,
                &inner.shared.stats,
                &runtime,
            )
        });
        if let Err(e) = loops {
            py.detach(|| inner.shared.loops.close(Duration::from_secs(5)));
            return Err(e.into());
        }
        Ok(inner.core.start()?)
    }

    /// Applies `target(*args, **kwargs)`; returns its `Job` handle at once
    /// (the job waits for a slot in the pool, not in the caller).
    #[pyo3(signature = (target, args=None, kwargs=None, callback=None, error_callback=None,
                        accept_callback=None, timeout_callback=None, soft_timeout=None, timeout=None,
                        green=false, label=None))]
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        py: Python<'_>,
        target: Py<PyAny>,
        args: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
        callback: Option<Py<PyAny>>,
        error_callback: Option<Py<PyAny>>,
        accept_callback: Option<Py<PyAny>>,
        timeout_callback: Option<Py<PyAny>>,
        soft_timeout: Option<f64>,
        timeout: Option<f64>,
        green: bool,
        label: Option<Py<PyAny>>,
    ) -> PyResult<PyJob> {
        let args = match args {
            Some(a) if !a.is_none() => {
                PyTuple::new(py, a.try_iter()?.collect::<PyResult<Vec<_>>>()?)?
            }
            _ => PyTuple::empty(py),
        };
        let calls = Calls {
            target,
            args: args.unbind(),
            kwargs: kwargs.filter(|k| !k.is_empty()).map(Bound::unbind),
            callback: callback.filter(|c| !c.is_none(py)),
            error_callback: error_callback.filter(|c| !c.is_none(py)),
            accept_callback: accept_callback.filter(|c| !c.is_none(py)),
            timeout_callback: timeout_callback.filter(|c| !c.is_none(py)),
        };
        let mut job = JobShared::new(calls, seconds::limit(soft_timeout), seconds::limit(timeout));
        if green {
            job = job.on_loop(label);
        }
        let job = Arc::new(job);
        if let Err(e) = self.inner.core.submit(Arc::clone(&job)) {
            job.mark_dropped();
            return Err(e.into());
        }
        Ok(PyJob {
            job,
            pool: Arc::clone(&self.inner),
        })
    }

    /// Kills the job `pid`: SIGUSR1 raises `SoftTimeLimitExceeded` in it;
    /// any other signal ends it at once (reported as Celery's `Terminated`
    /// with that signal) and raises into its thread or cancels its
    /// coroutine. With `defer`, the kill's report (and SIGUSR1's exception)
    /// goes through `hooks.defer` instead of happening before this
    /// returns. Returns "killed", "exited" (it ended first), "signalled"
    /// (SIGUSR1), "not-running" or "unknown".
    #[pyo3(signature = (pid, signal=None, defer=false))]
    fn terminate_job(
        &self,
        py: Python<'_>,
        pid: u64,
        signal: Option<i32>,
        defer: bool,
    ) -> &'static str {
        let job = self.inner.shared.jobs().get(&pid).cloned();
        let Some(job) = job else {
            return "unknown";
        };
        if defer && signal == Some(SIGUSR1) {
            // Celery stores REVOKED right after this returns: the soft
            // exception goes in after that, so that what the task returns
            // when it catches it is its result (as with prefork).
            match self.defer_usr1(py, job.clone()) {
                Ok(()) => return "signalled",
                Err(e) => e.write_unraisable(py, None),
            }
        }
        self.inner.kill_job(py, &job, signal, defer)
    }

    /// Adds `n` slots; waiting jobs start at once.
    #[pyo3(signature = (n=1))]
    fn grow(&self, n: usize) -> PyResult<usize> {
        Ok(self.inner.core.grow(n)?)
    }

    /// Removes `n` slots; running jobs go on (free slots go negative).
    /// Raises ValueError below zero, leaving the limit unchanged.
    #[pyo3(signature = (n=1))]
    fn shrink(&self, n: usize) -> PyResult<usize> {
        Ok(self.inner.core.shrink(n)?)
    }

    /// The current limit.
    #[getter]
    fn limit(&self) -> usize {
        self.inner.core.limit()
    }

    /// Waits for running jobs to finish, then stops; idle threads leave.
    /// Jobs still waiting for a slot run first, or with `drop_queued`
    /// never run and get no report.
    #[pyo3(signature = (drop_queued=false))]
    fn stop(&self, py: Python<'_>, drop_queued: bool) {
        let inner = &self.inner;
        py.detach(|| {
            inner.core.stop(drop_queued);
            inner.shared.loops.close(Duration::from_secs(5));
            inner.shared.threads.close(Duration::from_secs(5));
        });
    }

    /// Kills every job, queued or running, then stops.
    fn terminate(&self, py: Python<'_>) {
        let inner = &self.inner;
        py.detach(|| {
            inner.core.terminate();
            inner.shared.loops.close(Duration::from_secs(5));
            inner.shared.threads.close(Duration::from_secs(5));
        });
    }

    /// Refuses new jobs; queued and running ones go on.
    fn close(&self) {
        self.inner.core.close();
    }

    /// Counters: Celery's keys plus the core's and the threads'.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.core.info();
        let t = self.inner.shared.threads.counts();
        let s = &self.inner.shared.stats;
        let d = PyDict::new(py);
        d.set_item("max-concurrency", c.limit)?;
        d.set_item("free-threads", c.free)?;
        d.set_item("running-threads", c.running)?;
        d.set_item("state", c.state)?;
        d.set_item("waiting", c.waiting)?;
        d.set_item("applied", c.applied)?;
        d.set_item("completed", c.completed)?;
        d.set_item("panicked", c.panicked)?;
        d.set_item("terminated", c.terminated)?;
        d.set_item("callback-panics", c.callback_panics)?;
        d.set_item("threads", t.alive)?;
        d.set_item("idle-threads", t.idle)?;
        d.set_item("threads-started", t.started)?;
        d.set_item("queued-for-thread", t.queued)?;
        d.set_item("abandoned-threads", s.abandoned.load(Ordering::Relaxed))?;
        d.set_item(
            "abandoned-threads-total",
            s.abandoned_total.load(Ordering::Relaxed),
        )?;
        d.set_item("kills-raised", s.kills_raised.load(Ordering::Relaxed))?;
        d.set_item("soft-raised", s.soft_raised.load(Ordering::Relaxed))?;
        d.set_item("loops", self.inner.shared.loops.count())?;
        d.set_item("coroutines", s.coroutines.load(Ordering::Relaxed))?;
        d.set_item(
            "coroutines-cancelling",
            s.cancelling.load(Ordering::Relaxed),
        )?;
        d.set_item(
            "coroutines-cancelled-total",
            s.cancelled_total.load(Ordering::Relaxed),
        )?;
        Ok(d)
    }
}

/// The handle `Pool.apply` returns (Celery keeps a weak reference to it and
/// calls `terminate(signal)` on revoke).
#[pyclass(name = "Job", module = "greenpool._greenpool", weakref, frozen)]
pub(crate) struct PyJob {
    pub(crate) job: Arc<JobShared>,
    pub(crate) pool: Arc<PoolInner>,
}

#[pymethods]
impl PyJob {
    /// The job's pid (unique in the pool, never reused), or None before it
    /// was admitted.
    #[getter]
    fn pid(&self) -> Option<u64> {
        self.job.pid()
    }

    /// True once the job's one result (or failure, or kill) was reported.
    fn ready(&self) -> bool {
        self.job.is_reported()
    }

    /// Waits until `ready()`, or `timeout` seconds; returns `ready()`.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> bool {
        let t = seconds::timeout(timeout);
        let job = Arc::clone(&self.job);
        py.detach(move || job.wait_reported(t))
    }

    /// Kills the job, admitted or not (SIGUSR1 raises
    /// `SoftTimeLimitExceeded` in it instead).
    #[pyo3(signature = (signal=None))]
    fn terminate(&self, py: Python<'_>, signal: Option<i32>) -> &'static str {
        self.pool.kill_job(py, &self.job, signal, false)
    }

    fn __repr__(&self) -> String {
        match self.job.pid() {
            Some(pid) => format!("<greenpool Job pid={pid}>"),
            None => "<greenpool Job (waiting)>".to_owned(),
        }
    }
}
