//! [`TimerRef`]: names one scheduled entry so that it can be cancelled.

use std::fmt;

use super::entry::Entry;
use super::queue::Key;

/// Names one scheduled occurrence of an entry, or a whole repeating series;
/// hand it to [`Timer::cancel`].
///
/// Dropping a `TimerRef` does not cancel anything: the entry still fires.
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
/// let tref = timer.call_after(Duration::from_secs(1), || {}, 0).unwrap();
/// assert!(!tref.entry().is_repeating());
/// assert!(timer.cancel(&tref).was_pending());
/// # }
/// ```
///
/// [`Timer::cancel`]: crate::Timer::cancel
#[derive(Clone)]
pub struct TimerRef {
    /// Where the occurrence sits in the timer's queue (stale once it left).
    pub(crate) key: Key,
    /// The entry; for a repeating entry it names the series.
    pub(crate) entry: Entry,
}

impl TimerRef {
    pub(crate) fn new(key: Key, entry: Entry) -> TimerRef {
        TimerRef { key, entry }
    }

    /// The scheduled entry.
    ///
    /// # Examples
    ///
    /// See [`TimerRef`].
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl fmt::Debug for TimerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerRef")
            .field("key", &self.key)
            .field("entry", &self.entry)
            .finish()
    }
}
