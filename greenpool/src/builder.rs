//! [`PoolBuilder`]: the pool's options, checked before anything runs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::BuildError;
use crate::pool::{Config, TaskPool};

/// Builds a [`TaskPool`]. Options are checked by [`PoolBuilder::build`],
/// which never panics.
///
/// # Examples
///
/// ```
/// use greenpool::{BuildError, TaskPool};
///
/// let pool = TaskPool::builder().limit(100).putlocks(false).build().unwrap();
/// assert_eq!(pool.limit(), 100);
/// assert_eq!(TaskPool::builder().limit(-1).build().unwrap_err(), BuildError::NegativeLimit(-1));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder {
    limit: Option<i64>,
    putlocks: bool,
    callbacks_propagate: bool,
    term_grace: Duration,
    capture_backtraces: bool,
    options: BTreeMap<String, String>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            limit: None,
            putlocks: true,
            callbacks_propagate: false,
            term_grace: Duration::from_secs(1),
            capture_backtraces: true,
            options: BTreeMap::new(),
        }
    }
}

impl PoolBuilder {
    /// A builder with the defaults: no limit yet, `putlocks` on, one second
    /// of grace for TERM/INT kills, backtraces captured.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most jobs that run at once (required). 0 starts the pool paused:
    /// nothing runs until it grows. Negative limits are refused by `build`.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `apply_async` waits for a free slot (true, the default) or
    /// fails at once with [`ApplyError::Full`](crate::ApplyError::Full).
    pub fn putlocks(mut self, putlocks: bool) -> Self {
        self.putlocks = putlocks;
        self
    }

    /// When true, a panic in a result callback is raised again, once the
    /// pool's bookkeeping is done, where the job's [`JobHandle`] is awaited
    /// (as tokio raises a task's panic through its `JoinHandle`); when false
    /// (the default), it is only logged and counted. Either way the job's
    /// outcome was reported and its slot freed.
    ///
    /// [`JobHandle`]: crate::JobHandle
    pub fn callbacks_propagate(mut self, propagate: bool) -> Self {
        self.callbacks_propagate = propagate;
        self
    }

    /// How long a TERM or INT kill waits for the job to end by itself after
    /// its token is cancelled, before it kills it.
    pub fn term_grace(mut self, grace: Duration) -> Self {
        self.term_grace = grace;
        self
    }

    /// Whether job panics carry a location and a backtrace. Capture installs
    /// a process-wide panic hook once, chained to the one before it: it
    /// records what it needs while a job runs, and hands every panic on to
    /// that previous hook unchanged.
    pub fn capture_backtraces(mut self, capture: bool) -> Self {
        self.capture_backtraces = capture;
        self
    }

    /// A free-form option, kept for the application (Celery's `**options`).
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Checks the options and builds the pool (not started).
    ///
    /// # Errors
    ///
    /// [`BuildError`] when the limit is missing, negative or too large, or
    /// an option key is empty.
    pub fn build(self) -> Result<TaskPool, BuildError> {
        let limit = self.limit.ok_or(BuildError::MissingLimit)?;
        if limit < 0 {
            return Err(BuildError::NegativeLimit(limit));
        }
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        let limit_usize = usize::try_from(limit)
            .ok()
            .filter(|l| *l <= max)
            .ok_or(BuildError::LimitTooLarge { limit, max })?;
        if self.options.keys().any(String::is_empty) {
            return Err(BuildError::EmptyOptionKey);
        }
        if self.capture_backtraces {
            crate::unwind::install_hook();
        }
        Ok(TaskPool::from_config(Config {
            limit: limit_usize,
            putlocks: self.putlocks,
            callbacks_propagate: self.callbacks_propagate,
            term_grace: self.term_grace,
            options: self.options,
        }))
    }
}
