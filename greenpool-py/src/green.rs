//! A coroutine job as its event loop sees it: `greenpool._greenpool.GreenJob`,
//! handed to the loop's Python half (`greenpool/_loop.py`) by the loop's
//! `take()`.
//!
//! The Python driver of one job calls, in order: `begin(driver)` (the
//! accept callback; false means do not run), then runs the target in a
//! greenlet, `settle()` when the task's coroutine returned or raised (false
//! means a kill came first: the outcome is dropped), and `finish(ok, value)`
//! with what the target returned or raised (reports it, frees the slot).
//! `release()` frees the slot of a job that did not begin. Both hand the
//! slot to the loops' releaser (`release.rs`), which frees finished jobs'
//! slots in batches on the core's runtime. A `GreenJob` dropped without
//! either frees the slot too, and its job reports lost.

use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::hooks::Hooks;
use crate::job::{JobShared, Runner, Stats};
use crate::release::{Release, Releaser};

/// One coroutine job on its loop.
#[pyclass(module = "greenpool._greenpool", frozen)]
pub(crate) struct GreenJob {
    job: Arc<JobShared>,
    done: Mutex<Option<Release>>,
    hooks: Arc<Hooks>,
    stats: Arc<Stats>,
    releaser: Arc<Releaser>,
}

impl GreenJob {
    pub(crate) fn new(
        job: Arc<JobShared>,
        done: Release,
        hooks: Arc<Hooks>,
        stats: Arc<Stats>,
        releaser: Arc<Releaser>,
    ) -> Self {
        GreenJob {
            job,
            done: Mutex::new(Some(done)),
            hooks,
            stats,
            releaser,
        }
    }
}

#[pymethods]
impl GreenJob {
    /// The callable to run (Celery's tracer, or an `async def` function).
    #[getter]
    fn target(&self, py: Python<'_>) -> Py<PyAny> {
        self.job.calls.target.clone_ref(py)
    }

    /// Its positional arguments.
    #[getter]
    fn args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.job.calls.args.clone_ref(py)
    }

    /// Its keyword arguments, or None.
    #[getter]
    fn kwargs(&self, py: Python<'_>) -> Option<Py<PyDict>> {
        self.job.calls.kwargs.as_ref().map(|k| k.clone_ref(py))
    }

    /// What names the job in logs (Celery's task name and id), or None.
    #[getter]
    fn label(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.job.label.as_ref().map(|l| l.clone_ref(py))
    }

    /// The job's pid.
    #[getter]
    fn pid(&self) -> Option<u64> {
        self.job.pid()
    }

    /// Calls the accept callback and marks the job running with `driver`
    /// (whose `kill()` and `soft()` a kill or a limit calls, from any
    /// thread). False: do not run it, and `release()`.
    fn begin(&self, py: Python<'_>, driver: Py<PyAny>) -> bool {
        let begun = self.job.begin(py, &self.hooks, Runner::Loop, Some(driver));
        if begun {
            self.stats
                .coroutines
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        begun
    }

    /// True once the job was killed: its coroutine must not start.
    fn killed(&self) -> bool {
        self.job.is_killed()
    }

    /// The task's coroutine ended: claims the report. False when a kill
    /// claimed it first (raise `CancelledError` instead of returning).
    fn settle(&self, py: Python<'_>) -> bool {
        self.job.settle(py)
    }

    /// The target returned `value` (`ok`) or raised the exception `value`:
    /// reports it unless killed, then frees the slot (see `release`).
    fn finish(&self, py: Python<'_>, ok: bool, value: Py<PyAny>) {
        let result = if ok {
            Ok(value)
        } else {
            Err(PyErr::from_value(value.into_bound(py)))
        };
        self.job.finish(py, &self.hooks, &self.stats, result);
        self.stats
            .coroutines
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.release();
    }

    /// Frees the job's slot (once; later calls do nothing), soon after,
    /// on the core's runtime (`release.rs`).
    fn release(&self) {
        let done = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(done) = done {
            self.releaser.release(done);
        }
    }

    fn __repr__(&self) -> String {
        match self.job.pid() {
            Some(pid) => format!("<greenpool GreenJob pid={pid}>"),
            None => "<greenpool GreenJob>".to_owned(),
        }
    }
}
