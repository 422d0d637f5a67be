//! [`PoolState`]: the lifecycle states of Celery's `BasePool`, on their
//! own so that the errors and `info()` that name a state need not import
//! the pool (`pool/state.rs` has the transitions).

use std::fmt;

use serde::Serialize;

/// The lifecycle states of Celery's `BasePool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PoolState {
    /// Built, not started.
    NotStarted,
    /// Started: accepts jobs.
    Run,
    /// Closed: running jobs go on, no new ones are accepted.
    Close,
    /// Stopped or terminated.
    Terminate,
}

impl PoolState {
    #[inline]
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => PoolState::Run,
            2 => PoolState::Close,
            3 => PoolState::Terminate,
            _ => PoolState::NotStarted,
        }
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolState::NotStarted => "not started",
            PoolState::Run => "running",
            PoolState::Close => "closed",
            PoolState::Terminate => "terminated",
        })
    }
}
