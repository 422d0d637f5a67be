//! [`Scheduled`]: one pending entry as listed by `Timer::queue`.

use tokio::time::Instant;

use super::tref::TimerRef;

/// One pending entry, as listed by [`Timer::queue`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenpool::Timer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = Timer::new();
/// let tref = timer.call_after(Duration::from_secs(1), || {}, 3).unwrap();
/// let pending = timer.queue();
/// assert_eq!(pending[0].priority, 3);
/// assert!(pending[0].tref.entry().ptr_eq(tref.entry()));
/// # }
/// ```
///
/// [`Timer::queue`]: crate::Timer::queue
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Scheduled {
    /// When the entry becomes due.
    pub eta: Instant,
    /// Its priority: among equal etas, the lower value fires first.
    pub priority: i32,
    /// A reference that cancels it.
    pub tref: TimerRef,
}
