//! Errors of the native pool, and how they reach Python.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(
    _greenpool,
    PoolError,
    pyo3::exceptions::PyRuntimeError,
    "The pool refused a call: it is not running, or its runtime or threads could not start."
);

/// What can go wrong in the pool's own calls (not in the tasks it runs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// The limit or a resize is out of range.
    #[error(
        "{0} (a pool limit is a count of slots: 0 or more; shrink by at most the current limit)"
    )]
    Limit(String),
    /// Applying to a pool that is not running.
    #[error("the pool is not running (call start() first; it cannot be used after stop() or terminate())")]
    NotRunning,
    /// The runtime could not be built.
    #[error(
        "could not start the pool's runtime: {0} (check the process's thread limit, ulimit -u)"
    )]
    Runtime(String),
    /// An event loop for coroutine tasks could not start.
    #[error("could not start the pool's event loop: {0} (check GREENPOOL_LOOP; uvloop must be installed to be chosen)")]
    Loop(String),
    /// The pool was started twice.
    #[error("the pool was already started")]
    AlreadyStarted,
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Limit(_) => PyValueError::new_err(e.to_string()),
            Error::Runtime(_) | Error::Loop(_) => PyRuntimeError::new_err(e.to_string()),
            Error::NotRunning | Error::AlreadyStarted => PoolError::new_err(e.to_string()),
        }
    }
}
