//! A job's time limits and the callback told when one passes: set on the
//! job (`job.rs`), enforced by the job's task (`run_job.rs`).

use std::sync::Arc;
use std::time::Duration;

/// The timeout callback: called with `soft = true` when the soft time limit
/// passes and `soft = false` when the hard one does, with the limit that
/// passed. It may run twice for one job (soft, then hard); a panic in it is
/// caught and logged.
pub type TimeoutCallback = Arc<dyn Fn(bool, Duration) + Send + Sync + 'static>;

/// A job's time limits.
#[derive(Clone, Default)]
pub(crate) struct TimeLimits {
    pub(crate) hard: Option<Duration>,
    pub(crate) soft: Option<Duration>,
    pub(crate) callback: Option<TimeoutCallback>,
}
