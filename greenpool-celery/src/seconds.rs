//! Seconds from the wire or a command line, turned into durations.
//!
//! Celery sends times as float seconds (`timelimit`, `countdown`, retry
//! countdowns, link options) and a hostile or careless producer can put
//! anything there: `1e20`, `-5`, `NaN`, `Infinity`. `Duration::from_secs_f64`
//! panics on most of those, and an `Instant` or `SystemTime` sum panics on
//! durations far shorter than `Duration::MAX`. Every such number goes
//! through [`duration_from_secs`] (or [`limit_from_secs`] where `0` and
//! `null` mean "no limit", as in Celery), which caps durations at
//! [`MAX_SECONDS`] so that any sum with the current time stays in range.

use std::time::Duration;

/// The longest duration accepted: 100 years. Longer waits and limits are
/// refused with [`SecondsError::TooLarge`] rather than overflowing a
/// clock sum somewhere downstream.
pub const MAX_SECONDS: f64 = 3_155_760_000.0;

/// [`MAX_SECONDS`] as a duration, for clamping durations that come from
/// Rust callers (`Duration::MAX` means "forever" to them).
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// A number of seconds that cannot be used as a duration.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SecondsError {
    /// Not a number.
    #[error("{what} is NaN; send a number of seconds")]
    NaN {
        /// The setting or field, e.g. `"countdown"`.
        what: &'static str,
    },
    /// Below zero.
    #[error("{what} is negative ({value} s); send zero or more seconds")]
    Negative {
        /// The setting or field.
        what: &'static str,
        /// The value received.
        value: f64,
    },
    /// Infinite, or longer than [`MAX_SECONDS`].
    #[error(
        "{what} of {value} s is out of range; the most accepted is {MAX_SECONDS} s (100 years)"
    )]
    TooLarge {
        /// The setting or field.
        what: &'static str,
        /// The value received.
        value: f64,
    },
}

/// `secs` as a duration: zero or more seconds, at most [`MAX_SECONDS`].
///
/// `what` names the field in the error, so that the message a client
/// reads says which of its numbers was refused.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::seconds::{duration_from_secs, SecondsError};
/// assert_eq!(duration_from_secs("countdown", 2.5), Ok(Duration::from_millis(2500)));
/// assert!(matches!(duration_from_secs("countdown", 1e19), Err(SecondsError::TooLarge { .. })));
/// assert!(matches!(duration_from_secs("countdown", -1.0), Err(SecondsError::Negative { .. })));
/// assert!(matches!(duration_from_secs("countdown", f64::NAN), Err(SecondsError::NaN { .. })));
/// ```
///
/// # Errors
///
/// [`SecondsError`] for NaN, negative, infinite or too large values.
pub fn duration_from_secs(what: &'static str, secs: f64) -> Result<Duration, SecondsError> {
    if secs.is_nan() {
        return Err(SecondsError::NaN { what });
    }
    if secs < 0.0 {
        return Err(SecondsError::Negative { what, value: secs });
    }
    if secs > MAX_SECONDS {
        return Err(SecondsError::TooLarge { what, value: secs });
    }
    // In range: finite, 0 ..= MAX_SECONDS, so the conversion cannot panic.
    Ok(Duration::from_secs_f64(secs))
}

/// A time limit as Celery reads it: `None`, `0` and `+Infinity` mean no
/// limit (Celery only arms a limit for a truthy value, and an infinite
/// one never fires); anything else must be a valid duration.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::seconds::limit_from_secs;
/// assert_eq!(limit_from_secs("time limit", None), Ok(None));
/// assert_eq!(limit_from_secs("time limit", Some(0.0)), Ok(None));
/// assert_eq!(limit_from_secs("time limit", Some(f64::INFINITY)), Ok(None));
/// assert_eq!(limit_from_secs("time limit", Some(30.0)), Ok(Some(Duration::from_secs(30))));
/// assert!(limit_from_secs("time limit", Some(1e20)).is_err());
/// ```
///
/// # Errors
///
/// As [`duration_from_secs`], for NaN, negative and finite values beyond
/// [`MAX_SECONDS`].
pub fn limit_from_secs(
    what: &'static str,
    secs: Option<f64>,
) -> Result<Option<Duration>, SecondsError> {
    match secs {
        None => Ok(None),
        Some(s) if s == 0.0 || s == f64::INFINITY => Ok(None),
        Some(s) => duration_from_secs(what, s).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hostile_number_is_an_error_not_a_panic() {
        for bad in [
            f64::NAN,
            -f64::NAN,
            -0.5,
            f64::NEG_INFINITY,
            f64::INFINITY,
            1e19,
            1e20,
            f64::MAX,
            MAX_SECONDS * 1.0001,
        ] {
            assert!(duration_from_secs("x", bad).is_err(), "{bad}");
        }
        assert_eq!(duration_from_secs("x", 0.0), Ok(Duration::ZERO));
        assert_eq!(duration_from_secs("x", -0.0), Ok(Duration::ZERO));
        let max = duration_from_secs("x", MAX_SECONDS).unwrap();
        assert_eq!(max, MAX_DURATION);
        assert_eq!(MAX_SECONDS, 100.0 * 365.25 * 86_400.0);
        // The largest accepted duration still adds to the clocks.
        assert!(std::time::Instant::now().checked_add(max).is_some());
        assert!(std::time::SystemTime::now().checked_add(max).is_some());
        assert!(tokio::time::Instant::now().checked_add(max).is_some());
    }

    #[test]
    fn errors_name_the_field() {
        let e = duration_from_secs("link countdown", 1e19).unwrap_err();
        assert!(e.to_string().contains("link countdown"), "{e}");
        assert!(e.to_string().contains("1e19") || e.to_string().contains("10000000000000000000"));
    }

    #[test]
    fn limits_follow_celery() {
        assert_eq!(limit_from_secs("l", Some(-0.0)), Ok(None));
        assert!(limit_from_secs("l", Some(-1.0)).is_err());
        assert!(limit_from_secs("l", Some(f64::NAN)).is_err());
        assert!(limit_from_secs("l", Some(f64::NEG_INFINITY)).is_err());
    }
}
