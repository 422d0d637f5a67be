//! Seconds from Python (a message's time limits, a wait's timeout, a
//! timer's delay) as `Duration`s: the one place where a float becomes a
//! duration, so that no value, however absurd, can panic the pool.
//!
//! `Duration::from_secs_f64` panics on a negative, NaN, infinite or too
//! large value; a task message may carry any of them (`time_limit=1e20`).
//! A limit too far away to be a `Duration` is no limit, as in the core.

use std::time::Duration;

/// A time limit: `None` (no limit) unless `secs` is a positive number of
/// seconds small enough to be a `Duration`. NaN, zero, negative, infinite
/// and too-large values mean no limit.
pub(crate) fn limit(secs: Option<f64>) -> Option<Duration> {
    secs.filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// A wait's timeout: `None` waits for ever. Negative and NaN mean do not
/// wait; infinite and too-large values wait for ever.
pub(crate) fn timeout(secs: Option<f64>) -> Option<Duration> {
    let s = secs?;
    if s.is_nan() || s <= 0.0 {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(s).ok()
}

/// Why a delay was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DelayError {
    /// NaN or infinite.
    #[error("a delay must be a finite number of seconds, got {0}")]
    NotFinite(f64),
    /// Finite but beyond what a `Duration` holds.
    #[error("a delay of {0} s is too far away (at most about 1.8e19 s)")]
    TooFar(f64),
}

/// A timer's delay, clamped at zero; NaN, infinite or too large is an error
/// (a timer entry that would never run is a caller's mistake).
pub(crate) fn delay(secs: f64) -> Result<Duration, DelayError> {
    if !secs.is_finite() {
        return Err(DelayError::NotFinite(secs));
    }
    Duration::try_from_secs_f64(secs.max(0.0)).map_err(|_| DelayError::TooFar(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_cannot_be_durations_are_no_limit() {
        for s in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e20,
            f64::MAX,
            0.0,
            -1.0,
        ] {
            assert_eq!(limit(Some(s)), None, "{s}");
        }
        assert_eq!(limit(None), None);
        assert_eq!(limit(Some(1.5)), Some(Duration::from_millis(1500)));
        assert_eq!(limit(Some(1e9)), Some(Duration::from_secs(1_000_000_000)));
    }

    #[test]
    fn timeouts_never_panic() {
        assert_eq!(timeout(None), None);
        assert_eq!(timeout(Some(f64::INFINITY)), None);
        assert_eq!(timeout(Some(1e300)), None);
        assert_eq!(timeout(Some(f64::NAN)), Some(Duration::ZERO));
        assert_eq!(timeout(Some(-3.0)), Some(Duration::ZERO));
        assert_eq!(timeout(Some(0.25)), Some(Duration::from_millis(250)));
    }

    #[test]
    fn delays_are_clamped_or_refused() {
        assert_eq!(delay(-1.0), Ok(Duration::ZERO));
        assert_eq!(delay(2.0), Ok(Duration::from_secs(2)));
        assert!(matches!(delay(f64::NAN), Err(DelayError::NotFinite(_))));
        assert!(matches!(
            delay(f64::INFINITY),
            Err(DelayError::NotFinite(_))
        ));
        assert_eq!(delay(1e20), Err(DelayError::TooFar(1e20)));
    }
}
