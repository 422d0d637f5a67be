//! `greenpool._greenpool.Timer`: the pool's `Timer` attribute, kombu's timer
//! API over the greenpool core's timer (one driver task and one sleep per
//! timer; entries run on the timer runtime's thread, taking the GIL).
//!
//! Etas are wall-clock timestamps (`time.time()`) or datetimes, as in
//! kombu; they are turned into monotonic instants when entered.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use greenpool::{Timer as CoreTimer, TimerError, TimerRef as CoreRef};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// The runtime every timer of the process runs on, built on first use.
fn runtime() -> PyResult<&'static Runtime> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("greenpool-timer")
                .enable_time()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(format!("could not start the timer runtime: {e}")))
}

fn timer_err(e: TimerError) -> PyErr {
    match e {
        TimerError::Stopped => PyRuntimeError::new_err("the timer is stopped"),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn now_timestamp() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A delay in seconds, clamped at zero; NaN or infinite is an error.
fn delay(secs: f64) -> PyResult<Duration> {
    crate::seconds::delay(secs).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// An eta (a `time.time()` timestamp or a datetime) as a delay from now.
fn eta_delay(eta: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let ts: f64 = if eta.hasattr("timestamp")? {
        eta.call_method0("timestamp")?.extract()?
    } else {
        eta.extract()?
    };
    delay(ts - now_timestamp())
}

/// What an entry calls: `fun(*args, **kwargs)`, its exception to `on_error`.
struct Call {
    fun: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    on_error: Option<Py<PyAny>>,
}

impl Call {
    fn run(&self) {
        Python::attach(|py| {
            let kwargs = self.kwargs.as_ref().map(|k| k.bind(py));
            if let Err(e) = self.fun.bind(py).call(self.args.bind(py), kwargs) {
                match &self.on_error {
                    Some(handler) => {
                        if let Err(e2) = handler.call1(py, (e.into_value(py),)) {
                            e2.write_unraisable(py, Some(handler.bind(py)));
                        }
                    }
                    None => e.write_unraisable(py, Some(self.fun.bind(py))),
                }
            }
        });
    }
}

/// A scheduled entry: `cancel()` stops it (a series, for `call_repeatedly`).
#[pyclass(module = "greenpool._greenpool", name = "TimerRef", frozen)]
pub(crate) struct PyTimerRef {
    tref: CoreRef,
    timer: CoreTimer,
    canceled: std::sync::atomic::AtomicBool,
}

#[pymethods]
impl PyTimerRef {
    /// Cancels the entry; harmless when it already ran or was cancelled.
    fn cancel(&self) {
        self.timer.cancel(&self.tref);
        self.canceled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True once cancelled.
    #[getter]
    fn canceled(&self) -> bool {
        self.canceled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// kombu's spelling.
    #[getter]
    fn cancelled(&self) -> bool {
        self.canceled()
    }
}

/// kombu's timer API: `call_at`, `call_after`, `call_repeatedly`,
/// `enter_at`, `enter_after`, `apply_entry`, `cancel`, `clear`, `queue`,
/// `stop`, `len()`. `on_error(exc)` gets the exception of an entry.
#[pyclass(module = "greenpool._greenpool", frozen)]
pub(crate) struct Timer {
    timer: CoreTimer,
    on_error: Option<Py<PyAny>>,
}

impl Timer {
    fn call(
        &self,
        py: Python<'_>,
        fun: Py<PyAny>,
        args: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Arc<Call>> {
        let args = match args {
            Some(a) if !a.is_none() => {
                PyTuple::new(py, a.try_iter()?.collect::<PyResult<Vec<_>>>()?)?
            }
            _ => PyTuple::empty(py),
        };
        Ok(Arc::new(Call {
            fun,
            args: args.unbind(),
            kwargs: kwargs.map(Bound::unbind),
            on_error: self.on_error.as_ref().map(|h| h.clone_ref(py)),
        }))
    }

    fn tref(&self, tref: CoreRef) -> PyTimerRef {
        PyTimerRef {
            tref,
            timer: self.timer.clone(),
            canceled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn after(
        &self,
        py: Python<'_>,
        wait: Duration,
        call: Arc<Call>,
        priority: i32,
    ) -> PyResult<PyTimerRef> {
        let rt = runtime()?;
        let _enter = rt.enter();
        let timer = &self.timer;
        let tref = py
            .detach(|| timer.call_after(wait, move || call.run(), priority))
            .map_err(timer_err)?;
        Ok(self.tref(tref))
    }
}

#[pymethods]
impl Timer {
    #[new]
    #[pyo3(signature = (max_interval=None, on_error=None, on_tick=None, **_kwargs))]
    fn new(
        max_interval: Option<f64>,
        on_error: Option<Py<PyAny>>,
        on_tick: Option<Py<PyAny>>,
        _kwargs: Option<Bound<'_, PyDict>>,
    ) -> Self {
        let _ = (max_interval, on_tick);
        Timer {
            timer: CoreTimer::new(),
            on_error,
        }
    }

    /// Calls `fun(*args, **kwargs)` at `eta` (a timestamp or a datetime).
    #[pyo3(signature = (eta, fun, args=None, kwargs=None, priority=0))]
    fn call_at(
        &self,
        py: Python<'_>,
        eta: Bound<'_, PyAny>,
        fun: Py<PyAny>,
        args: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
        priority: i32,
    ) -> PyResult<PyTimerRef> {
        let wait = eta_delay(&eta)?;
        let call = self.call(py, fun, args, kwargs)?;
        self.after(py, wait, call, priority)
    }

    /// Calls `fun(*args, **kwargs)` after `secs` seconds.
    #[pyo3(signature = (secs, fun, args=None, kwargs=None, priority=0))]
    fn call_after(
        &self,
        py: Python<'_>,
        secs: f64,
        fun: Py<PyAny>,
        args: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
        priority: i32,
    ) -> PyResult<PyTimerRef> {
        let call = self.call(py, fun, args, kwargs)?;
        self.after(py, delay(secs)?, call, priority)
    }

    /// Calls `fun(*args, **kwargs)` every `secs` seconds until cancelled.
    #[pyo3(signature = (secs, fun, args=None, kwargs=None, priority=0))]
    fn call_repeatedly(
        &self,
        py: Python<'_>,
        secs: f64,
        fun: Py<PyAny>,
        args: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
        priority: i32,
    ) -> PyResult<PyTimerRef> {
        let call = self.call(py, fun, args, kwargs)?;
        let every = delay(secs)?;
        let rt = runtime()?;
        let _enter = rt.enter();
        let timer = &self.timer;
        let tref = py
            .detach(|| timer.call_repeatedly(every, move || call.run(), priority))
            .map_err(timer_err)?;
        Ok(self.tref(tref))
    }

    /// Calls the callable `entry` at `eta`.
    #[pyo3(signature = (entry, eta, priority=0))]
    fn enter_at(
        &self,
        py: Python<'_>,
        entry: Py<PyAny>,
        eta: Bound<'_, PyAny>,
        priority: i32,
    ) -> PyResult<PyTimerRef> {
        let wait = eta_delay(&eta)?;
        let call = self.call(py, entry, None, None)?;
        self.after(py, wait, call, priority)
    }

    /// Calls the callable `entry` after `secs` seconds.
    #[pyo3(signature = (entry, secs, priority=0))]
    fn enter_after(
        &self,
        py: Python<'_>,
        entry: Py<PyAny>,
        secs: f64,
        priority: i32,
    ) -> PyResult<PyTimerRef> {
        let call = self.call(py, entry, None, None)?;
        self.after(py, delay(secs)?, call, priority)
    }

    /// Calls the callable `entry` now, on this thread; its exception goes
    /// to `on_error`.
    fn apply_entry(&self, py: Python<'_>, entry: Py<PyAny>) -> PyResult<()> {
        let call = self.call(py, entry, None, None)?;
        py.detach(move || call.run());
        Ok(())
    }

    /// Cancels `tref` (a `TimerRef`, or anything with a `cancel()`).
    fn cancel(&self, tref: Bound<'_, PyAny>) -> PyResult<()> {
        tref.call_method0("cancel").map(drop)
    }

    /// Cancels every pending entry; returns how many.
    fn clear(&self) -> usize {
        self.timer.clear()
    }

    /// Cancels everything and refuses new entries.
    fn stop(&self) {
        self.timer.stop();
    }

    /// Nothing to do: the timer starts with its first entry.
    fn ensure_started(&self) {}

    /// The pending entries as `(eta timestamp, priority)`, soonest first.
    #[getter]
    fn queue<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let now = Instant::now();
        let wall = now_timestamp();
        let mut items: Vec<(f64, i32)> = self
            .timer
            .queue()
            .into_iter()
            .map(|s| {
                (
                    wall + s.eta.saturating_duration_since(now).as_secs_f64(),
                    s.priority,
                )
            })
            .collect();
        items.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        PyList::new(py, items)
    }

    fn __len__(&self) -> usize {
        self.timer.len()
    }

    /// True when nothing is pending.
    fn empty(&self) -> bool {
        self.timer.is_empty()
    }
}
