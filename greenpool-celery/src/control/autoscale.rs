//! `--autoscale max,min`: the pool grows with the backlog of held
//! requests and shrinks back when idle, after Celery's keep-alive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long the pool stays grown after a scale-up (Celery's
/// `AUTOSCALE_KEEPALIVE`).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(30);

/// How often the backlog is looked at (Celery's autoscaler interval).
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// The autoscaler's range and memory.
#[derive(Debug)]
pub(crate) struct Autoscaler {
    max: AtomicUsize,
    min: AtomicUsize,
    keepalive: Duration,
    last_up: Mutex<Option<Instant>>,
}

impl Autoscaler {
    /// An autoscaler between `min` and `max` slots.
    pub(crate) fn new(max: usize, min: usize, keepalive: Duration) -> Self {
        Autoscaler {
            max: AtomicUsize::new(max),
            min: AtomicUsize::new(min.min(max)),
            keepalive,
            last_up: Mutex::new(None),
        }
    }

    /// The range, `(max, min)`.
    pub(crate) fn range(&self) -> (usize, usize) {
        (
            self.max.load(Ordering::Relaxed),
            self.min.load(Ordering::Relaxed),
        )
    }

    /// Sets the range (`autoscale` command); returns the new `(max, min)`.
    pub(crate) fn update(&self, max: Option<usize>, min: Option<usize>) -> (usize, usize) {
        if let Some(m) = max {
            self.max.store(m, Ordering::Relaxed);
        }
        if let Some(m) = min {
            self.min.store(m, Ordering::Relaxed);
        }
        self.range()
    }

    /// One decision: the pool's new limit for a `backlog` of held
    /// requests and the current `limit`, at `now`.
    pub(crate) fn target(&self, backlog: usize, limit: usize, now: Instant) -> usize {
        let (max, min) = self.range();
        let want = backlog.clamp(min, max.max(min));
        let mut last_up = self.last_up.lock().unwrap_or_else(PoisonError::into_inner);
        if want > limit {
            *last_up = Some(now);
            want
        } else if want < limit {
            let idle_long = last_up.is_none_or(|t| now.duration_since(t) >= self.keepalive);
            if idle_long || limit > max {
                want
            } else {
                limit
            }
        } else {
            limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_at_once_and_shrinks_after_keepalive() {
        let a = Autoscaler::new(10, 2, Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(a.target(0, 2, t0), 2);
        assert_eq!(a.target(7, 2, t0), 7);
        assert_eq!(a.target(50, 7, t0), 10);
        assert_eq!(a.target(0, 10, t0 + Duration::from_secs(5)), 10);
        assert_eq!(a.target(0, 10, t0 + Duration::from_secs(31)), 2);
        assert_eq!(a.update(Some(4), None), (4, 2));
        assert_eq!(a.target(0, 10, t0), 2);
    }
}
