//! [`CancelResult`]: what `Timer::cancel` found.

/// What [`Timer::cancel`] found: whether the entry was still pending.
///
/// Cancelling is always harmless; this only reports what happened.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenpool::{CancelResult, Timer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = Timer::new();
/// let tref = timer.call_after(Duration::from_secs(1), || {}, 0).unwrap();
/// assert_eq!(timer.cancel(&tref), CancelResult::Cancelled);
/// assert_eq!(timer.cancel(&tref), CancelResult::NotPending);
/// # }
/// ```
///
/// [`Timer::cancel`]: crate::Timer::cancel
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelResult {
    /// The entry was pending and now never fires; for a repeating entry,
    /// the series was live and now stops (also when cancelled from inside
    /// its own run).
    Cancelled,
    /// Nothing to cancel: the entry already fired (it left the queue when
    /// the timer handed it to its task), or it was cancelled, cleared or
    /// stopped before.
    NotPending,
}

impl CancelResult {
    /// Whether the entry was still pending, i.e. [`CancelResult::Cancelled`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(greenpool::CancelResult::Cancelled.was_pending());
    /// assert!(!greenpool::CancelResult::NotPending.was_pending());
    /// ```
    pub fn was_pending(self) -> bool {
        self == CancelResult::Cancelled
    }
}
