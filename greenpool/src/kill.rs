//! Signals for [`TaskPool::terminate_job`](crate::TaskPool::terminate_job)
//! and what the call found.

use std::fmt;

/// The signal given to `terminate_job`.
///
/// Eventlet ignores it; greenpool gives it a meaning: [`KillSignal::Term`]
/// and [`KillSignal::Int`] first cancel the job's cancellation token and kill
/// only after the pool's grace period; every other signal kills at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KillSignal {
    /// SIGKILL (9): kill at once.
    Kill,
    /// SIGTERM (15): ask, then kill after the grace period.
    Term,
    /// SIGINT (2): ask, then kill after the grace period.
    Int,
    /// Any other signal number: kill at once.
    Other(i32),
}

impl KillSignal {
    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            KillSignal::Kill => 9,
            KillSignal::Term => 15,
            KillSignal::Int => 2,
            KillSignal::Other(n) => n,
        }
    }

    /// True for the signals that ask before they kill.
    pub fn is_graceful(self) -> bool {
        matches!(self, KillSignal::Term | KillSignal::Int)
    }
}

impl From<i32> for KillSignal {
    fn from(n: i32) -> Self {
        match n {
            9 => KillSignal::Kill,
            15 => KillSignal::Term,
            2 => KillSignal::Int,
            n => KillSignal::Other(n),
        }
    }
}

impl fmt::Display for KillSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillSignal::Kill => f.write_str("SIGKILL"),
            KillSignal::Term => f.write_str("SIGTERM"),
            KillSignal::Int => f.write_str("SIGINT"),
            KillSignal::Other(n) => write!(f, "signal {n}"),
        }
    }
}

/// What [`TaskPool::terminate_job`](crate::TaskPool::terminate_job) found
/// and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "it says whether the job was there"]
#[non_exhaustive]
pub enum KillResult {
    /// The job was killed; its callback ran with a terminated outcome.
    Killed,
    /// Asked through its token, the job ended by itself before the grace
    /// period ran out; its callback ran with its own outcome.
    Exited,
    /// The job asked for its own kill; it ends at its next `.await`.
    Requested,
    /// No job of this pool ever had this id.
    Unknown,
    /// The job had already ended (or was never admitted).
    AlreadyFinished,
}
