//! [`TimerError`]: why a timer refused an entry.

use std::time::Duration;

/// Why a [`Timer`] refused to schedule or run an entry.
///
/// The refused entry is not scheduled and never runs; the caller still holds
/// it (entries are passed by reference or built from a closure it can make
/// again).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenpool::{Timer, TimerError};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = Timer::new();
/// timer.stop();
/// let refused = timer.call_after(Duration::from_secs(1), || {}, 0);
/// assert!(matches!(refused, Err(TimerError::Stopped)));
/// # }
/// ```
///
/// [`Timer`]: crate::Timer
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimerError {
    /// The timer was stopped; it takes no more entries.
    #[error("timer is stopped; make a new timer to schedule more entries")]
    Stopped,
    /// The timer has no driver yet and the caller is not inside a tokio
    /// runtime to start it on.
    #[error("no tokio runtime here; schedule the first entry from inside a tokio runtime")]
    NoRuntime,
    /// A delay or repeat interval too long for the clock.
    #[error("delay of {0:?} is too long for the clock; use a shorter one")]
    TooLong(Duration),
    /// `call_repeatedly` with an interval of zero, which would never yield.
    #[error("repeat interval is zero; use an interval greater than zero")]
    ZeroInterval,
    /// A repeating entry made by another timer.
    #[error("entry repeats on another timer; enter it into the timer that made it")]
    ForeignEntry,
    /// A repeating entry whose series was cancelled or cleared.
    #[error("the repeating entry was cancelled; start a new series with call_repeatedly")]
    SeriesCancelled,
    /// The timer holds as many entries as it can index (about 4 billion).
    #[error("timer is full; cancel entries or spread them over more timers")]
    Full,
}
