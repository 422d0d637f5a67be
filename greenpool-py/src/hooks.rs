//! The Python side of what the native pool cannot do without `unsafe`:
//! raising into a thread, and building Celery's exception records.
//!
//! The hooks object is passed to `Pool(...)` by `greenpool.celery`; it has
//! the methods below. Raising into a thread is
//! `ctypes.pythonapi.PyThreadState_SetAsyncExc`, called from Python: the
//! exception is raised in that thread at its next bytecode.

use pyo3::call::PyCallArgs;
use pyo3::prelude::*;

/// Which exception to raise into a task's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raise {
    /// The job was killed: an exception the task's tracer does not catch,
    /// so the thread unwinds without writing a result.
    Kill,
    /// The soft time limit or SIGUSR1: `SoftTimeLimitExceeded`, which the
    /// task may catch to clean up.
    Soft,
}

/// The hooks object, shared by the pool, its threads and its jobs.
#[derive(Debug)]
pub(crate) struct Hooks {
    obj: Py<PyAny>,
    /// `ctypes.pythonapi.PyThreadState_SetAsyncExc` and `ctypes.c_ulong`,
    /// for `clear`, which runs on the task's own thread and so must not run
    /// Python bytecode (a pending exception would be raised right there).
    set_async_exc: Py<PyAny>,
    c_ulong: Py<PyAny>,
}

impl Hooks {
    pub(crate) fn new(obj: Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Hooks {
            set_async_exc: obj.getattr("set_async_exc")?.unbind(),
            c_ulong: obj.getattr("c_ulong")?.unbind(),
            obj: obj.unbind(),
        })
    }

    fn call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: impl PyCallArgs<'py>,
    ) -> PyResult<Py<PyAny>> {
        Ok(self.obj.bind(py).call_method1(name, args)?.unbind())
    }

    /// Raises into the thread `ident`; a failure is reported as unraisable.
    pub(crate) fn raise_in(&self, py: Python<'_>, ident: u64, what: Raise) {
        let kind = match what {
            Raise::Kill => "kill",
            Raise::Soft => "soft",
        };
        if let Err(e) = self.call(py, "raise_in", (ident, kind)) {
            e.write_unraisable(py, Some(self.obj.bind(py)));
        }
    }

    /// Clears an exception raised into `ident` that has not been taken yet.
    /// Calls the ctypes function directly: C calls only, no bytecode.
    pub(crate) fn clear(&self, py: Python<'_>, ident: u64) {
        let cleared = self
            .c_ulong
            .call1(py, (ident,))
            .and_then(|id| self.set_async_exc.call1(py, (id, py.None())));
        if let Err(e) = cleared {
            e.write_unraisable(py, Some(self.obj.bind(py)));
        }
    }

    /// The calling thread's `threading.get_ident()`.
    pub(crate) fn get_ident(&self, py: Python<'_>) -> PyResult<u64> {
        self.call(py, "get_ident", ())?.extract(py)
    }

    /// Whether the job whose accept callback is `accept` must be skipped:
    /// Celery revoked its request while it waited for a slot (Celery's
    /// `Request.revoked()` then announced it: REVOKED stored, event, ack).
    /// A failing check runs the job.
    pub(crate) fn revoked(&self, py: Python<'_>, accept: &Py<PyAny>) -> bool {
        match self
            .call(py, "revoked", (accept.clone_ref(py),))
            .and_then(|r| r.is_truthy(py))
        {
            Ok(revoked) => revoked,
            Err(e) => {
                e.write_unraisable(py, Some(self.obj.bind(py)));
                false
            }
        }
    }

    /// Runs one event loop on the calling thread until it is stopped
    /// (`greenpool._loop.run_loop`); `handle` is the loop's native half.
    pub(crate) fn run_loop(&self, py: Python<'_>, handle: Py<PyAny>) -> PyResult<()> {
        self.call(py, "run_loop", (handle,)).map(drop)
    }

    /// `time.monotonic()`.
    pub(crate) fn monotonic(&self, py: Python<'_>) -> f64 {
        self.call(py, "monotonic", ())
            .and_then(|t| t.extract(py))
            .unwrap_or(0.0)
    }

    /// The exception record of a task that raised.
    pub(crate) fn failure(&self, py: Python<'_>, err: PyErr) -> PyResult<Py<PyAny>> {
        self.call(py, "failure", (err.into_value(py),))
    }

    /// The exception record of a job killed with `signum` (Celery's `Terminated`).
    pub(crate) fn terminated(&self, py: Python<'_>, signum: i32) -> PyResult<Py<PyAny>> {
        self.call(py, "terminated", (signum,))
    }

    /// The exception record of a job past its hard time limit.
    pub(crate) fn time_limit(&self, py: Python<'_>, secs: f64) -> PyResult<Py<PyAny>> {
        self.call(py, "time_limit", (secs,))
    }

    /// The exception record of a job whose thread was lost.
    pub(crate) fn lost(&self, py: Python<'_>, why: &str) -> PyResult<Py<PyAny>> {
        self.call(py, "lost", (why,))
    }

    /// Calls `fun(arg)` later, on the worker's event loop when there is one.
    pub(crate) fn defer(&self, py: Python<'_>, fun: &Py<PyAny>, arg: Py<PyAny>) -> PyResult<()> {
        self.call(py, "defer", (fun.clone_ref(py), arg)).map(drop)
    }
}
