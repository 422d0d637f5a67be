//! Every public error of the pool.

use std::fmt;

use crate::pool_state::PoolState;

/// Why [`PoolBuilder::build`](crate::PoolBuilder::build) refused its options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No limit was given.
    #[error("no limit given: call PoolBuilder::limit(n) with n >= 0 (0 starts the pool paused)")]
    MissingLimit,
    /// The limit was negative.
    #[error("limit {0} is negative: give a limit of 0 or more (0 starts the pool paused)")]
    NegativeLimit(i64),
    /// The limit was larger than the pool can hold.
    #[error("limit {limit} is too large: give at most {max}")]
    LimitTooLarge {
        /// The limit asked for.
        limit: i64,
        /// The largest limit allowed.
        max: usize,
    },
    /// A free-form option had an empty key.
    #[error("option keys must not be empty: name the option")]
    EmptyOptionKey,
}

/// Why [`TaskPool::start`](crate::TaskPool::start) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The pool was already started, or was closed before it started.
    #[error("pool cannot start from state {0}: build a new pool")]
    NotStartable(PoolState),
    /// `start` was called outside a tokio runtime.
    #[error("no tokio runtime: call start() from inside a tokio runtime")]
    NoRuntime,
}

/// Why [`TaskPool::stop`](crate::TaskPool::stop) or
/// [`TaskPool::terminate`](crate::TaskPool::terminate) refused to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// Called from inside one of the pool's own jobs, which would wait for
    /// itself forever.
    #[error(
        "cannot stop the pool from inside its own job {0}: stop it from a task outside the pool"
    )]
    FromOwnJob(crate::JobId),
}

/// Why [`TaskPool::restart`](crate::TaskPool::restart) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// This pool cannot restart (as Celery's eventlet pool).
    #[error("restart is not supported by the green pool: stop it and build a new one")]
    NotSupported,
}

/// Why a grow or shrink was refused; the limit is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResizeError {
    /// The shrink would take the limit below zero.
    #[error("cannot shrink by {by}: limit is {limit}; shrink by at most {limit}")]
    BelowZero {
        /// The amount asked for.
        by: usize,
        /// The limit at the time.
        limit: usize,
    },
    /// The grow would take the limit past the largest the pool can hold.
    #[error("cannot grow by {by}: limit is {limit} and may not exceed {max}")]
    TooLarge {
        /// The amount asked for.
        by: usize,
        /// The limit at the time.
        limit: usize,
        /// The largest limit allowed.
        max: usize,
    },
}

/// Why a job was not applied. The job comes back untouched: nothing ran and
/// no callback fired.
#[non_exhaustive]
pub enum ApplyError<J> {
    /// The pool is not running (not started, closed, stopped or terminated).
    NotRunning {
        /// The state the pool was in.
        state: PoolState,
        /// The job, not run.
        job: J,
    },
    /// Every slot is taken and the caller asked not to wait.
    Full(J),
}

impl<J> ApplyError<J> {
    /// Gives the rejected job back.
    pub fn into_job(self) -> J {
        match self {
            ApplyError::NotRunning { job, .. } | ApplyError::Full(job) => job,
        }
    }

    /// The same error without its job (dropped here), for error types that
    /// must be `Sync`, such as `anyhow::Error`.
    pub fn without_job(self) -> ApplyError<()> {
        match self {
            ApplyError::NotRunning { state, .. } => ApplyError::NotRunning { state, job: () },
            ApplyError::Full(_) => ApplyError::Full(()),
        }
    }

    /// True if the pool was full.
    pub fn is_full(&self) -> bool {
        matches!(self, ApplyError::Full(_))
    }
}

impl<J> fmt::Debug for ApplyError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::NotRunning { state, .. } => f
                .debug_struct("NotRunning")
                .field("state", state)
                .finish_non_exhaustive(),
            ApplyError::Full(_) => f.write_str("Full(..)"),
        }
    }
}

impl<J> fmt::Display for ApplyError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::NotRunning { state, .. } => write!(
                f,
                "pool is {state}, not running: start() it first, or apply to a pool that is not closed"
            ),
            ApplyError::Full(_) => f.write_str(
                "pool is full: wait with apply_async, grow the pool, or retry later",
            ),
        }
    }
}

impl<J> std::error::Error for ApplyError<J> {}
