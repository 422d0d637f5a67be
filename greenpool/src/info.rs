//! [`PoolInfo`]: what `info()` reports, in Celery's keys.

use serde::Serialize;

use crate::pool_state::PoolState;

/// A snapshot of the pool, serialised with Celery's keys
/// (`implementation`, `max-concurrency`, `free-threads`, `running-threads`)
/// plus greenpool's counters.
///
/// # Examples
///
/// ```
/// let pool = greenpool::TaskPool::builder().limit(8).build().unwrap();
/// let info = pool.info();
/// assert_eq!(info.max_concurrency, 8);
/// assert_eq!(info.free_threads, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolInfo {
    /// `greenpool:TaskPool`.
    pub implementation: &'static str,
    /// The current limit.
    #[serde(rename = "max-concurrency")]
    pub max_concurrency: usize,
    /// `limit - running`; negative after a shrink below the running count.
    #[serde(rename = "free-threads")]
    pub free_threads: isize,
    /// Jobs holding a slot.
    #[serde(rename = "running-threads")]
    pub running_threads: usize,
    /// The lifecycle state.
    pub state: PoolState,
    /// Callers of `apply_async` waiting for a slot.
    pub waiting: usize,
    /// Jobs admitted since the pool was built.
    pub applied: u64,
    /// Jobs that completed.
    pub completed: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs that were killed.
    pub terminated: u64,
    /// Result or accept callbacks that panicked.
    #[serde(rename = "callback-panics")]
    pub callback_panics: u64,
}
