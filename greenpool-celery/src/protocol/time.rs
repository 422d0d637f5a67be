//! ISO-8601 timestamps as Celery writes them in `eta`, `expires` and
//! `date_done`: `2026-11-24T16:52:29.209879+00:00`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ProtocolError;

/// A point in time read from or written to the wire as ISO-8601.
///
/// Parsing (through `jiff`) accepts `T` or a space between date and time,
/// an optional fraction of up to nine digits, and `Z`, any `±HH:MM[:SS]`
/// or `±HHMM` offset (Celery writes local offsets when `enable_utc` is
/// off) or no offset (a naive time is taken as UTC, Celery's default
/// timezone). Formatting
/// always writes microseconds and `+00:00`, as Python's `isoformat()` does
/// for an aware UTC datetime.
///
/// ```
/// use greenpool_celery::Timestamp;
/// let t: Timestamp = "2026-11-24T16:52:29.209879+01:00".parse().unwrap();
/// assert_eq!(t.to_string(), "2026-11-24T15:52:29.209879+00:00");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    /// Wraps a [`SystemTime`].
    pub fn from_system_time(t: SystemTime) -> Self {
        Timestamp(t)
    }

    /// The wrapped [`SystemTime`].
    pub fn system_time(self) -> SystemTime {
        self.0
    }

    /// Seconds since the Unix epoch, negative before it.
    pub fn unix_seconds(self) -> f64 {
        match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// How long from now until this time; zero if it has passed.
    pub fn remaining(self) -> Duration {
        self.0
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// `self + d`, or `None` beyond the last instant the wire format can
    /// carry (the year 9999).
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenpool_celery::Timestamp;
    /// assert!(Timestamp::now().checked_add(Duration::from_secs(60)).is_some());
    /// assert!(Timestamp::now().checked_add(Duration::from_secs(u64::MAX)).is_none());
    /// ```
    pub fn checked_add(self, d: Duration) -> Option<Timestamp> {
        self.0
            .checked_add(d)
            .filter(|t| *t <= last())
            .map(Timestamp)
    }

    /// Whether this time has passed.
    pub fn is_past(self) -> bool {
        self.0 <= SystemTime::now()
    }
}

/// Adds a duration, saturating at the last instant the wire format can
/// carry (the year 9999) instead of overflowing; see
/// [`Timestamp::checked_add`] to detect that.
impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.checked_add(d).unwrap_or_else(|| Timestamp(last()))
    }
}

/// The last instant ISO-8601 text can carry (jiff's range).
fn last() -> SystemTime {
    SystemTime::from(jiff::Timestamp::MAX)
}

/// The first instant ISO-8601 text can carry.
fn first() -> SystemTime {
    SystemTime::from(jiff::Timestamp::MIN)
}

fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Some(SystemTime::from(ts));
    }
    // No offset (or one that pushes the time out of range): a naive time,
    // read as UTC, Celery's default timezone.
    let civil: jiff::civil::DateTime = text.parse().ok()?;
    Some(match jiff::tz::Offset::UTC.to_timestamp(civil) {
        Ok(ts) => SystemTime::from(ts),
        Err(_) if civil.year() > 0 => last(),
        Err(_) => first(),
    })
}

impl std::str::FromStr for Timestamp {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
            .map(Timestamp)
            .ok_or_else(|| ProtocolError::Timestamp(s.to_owned()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ts = jiff::Timestamp::try_from(self.0).unwrap_or(if self.0 > UNIX_EPOCH {
            jiff::Timestamp::MAX
        } else {
            jiff::Timestamp::MIN
        });
        // jiff splits a time before the epoch into negative whole seconds
        // and a negative fraction; ISO text wants the floor and a positive
        // fraction.
        let (mut secs, mut micros) = (ts.as_second(), ts.subsec_microsecond());
        if micros < 0 {
            secs -= 1;
            micros += 1_000_000;
        }
        let whole = jiff::Timestamp::from_second(secs).unwrap_or(ts);
        // Digits written by hand, not through `strftime` or padded
        // `write!` arguments: every result and event carries a timestamp,
        // and the formatting machinery cost more than the rest of a
        // result's text.
        let t = jiff::tz::Offset::UTC.to_datetime(whole);
        let Ok(year) = u32::try_from(t.year()) else {
            // Before year 0 (never on the wire): the slow path will do.
            return write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        };
        let mut text = *b"0000-00-00T00:00:00.000000+00:00";
        let mut put = |at: usize, width: usize, value: u32| {
            let mut v = value;
            for i in (at..at + width).rev() {
                // A digit: below 10, so the cast is exact.
                text[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, u32::from(t.month().unsigned_abs()));
        put(8, 2, u32::from(t.day().unsigned_abs()));
        put(11, 2, u32::from(t.hour().unsigned_abs()));
        put(14, 2, u32::from(t.minute().unsigned_abs()));
        put(17, 2, u32::from(t.second().unsigned_abs()));
        put(20, 6, micros.unsigned_abs());
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_celery_forms() {
        let base = ts("2026-11-24T16:52:29.209879+00:00");
        assert_eq!(ts("2026-11-24T16:52:29.209879Z"), base);
        assert_eq!(ts("2026-11-24 16:52:29.209879"), base);
        assert_eq!(ts("2026-11-24T17:52:29.209879+01:00"), base);
        assert_eq!(ts("2026-11-24T11:52:29.209879-0500"), base);
        assert_eq!(base.to_string(), "2026-11-24T16:52:29.209879+00:00");
        let before_epoch = Timestamp::from_system_time(UNIX_EPOCH - Duration::from_millis(500));
        assert_eq!(before_epoch.to_string(), "1969-12-31T23:59:59.500000+00:00");
        assert_eq!(
            ts("2024-02-29T00:00:07.000001").to_string(),
            "2024-02-29T00:00:07.000001+00:00"
        );
        assert_eq!(
            ts("0001-01-01").to_string(),
            "0001-01-01T00:00:00.000000+00:00"
        );
        assert_eq!(ts("1970-01-01T00:00:00").unix_seconds(), 0.0);
        assert_eq!(ts("2000-03-01").unix_seconds(), 951_868_800.0);
        // Python 3.11's fromisoformat reads an hour alone too.
        assert_eq!(ts("2026-11-24T16"), ts("2026-11-24T16:00:00Z"));
    }

    #[test]
    fn reads_offsets_other_than_utc() {
        // Celery with enable_utc off writes the local offset.
        let base = ts("2026-11-24T16:52:29.209879+00:00");
        assert_eq!(ts("2026-11-24T22:22:29.209879+05:30"), base);
        assert_eq!(ts("2026-11-24T06:52:29.209879-10:00"), base);
        assert_eq!(ts("2026-11-24T16:52:29.209879+00:00:00"), base);
        // Beyond the year 9999 in UTC: the last instant, not an error.
        assert!(ts("9999-12-31T23:59:59.999999").system_time() > base.system_time());
    }

    #[test]
    fn sums_never_overflow() {
        let now = Timestamp::now();
        assert!(now.checked_add(Duration::MAX).is_none());
        assert!(now.checked_add(Duration::from_secs(1 << 40)).is_none());
        let far = now + Duration::MAX;
        assert!(far > now);
        assert!(far.to_string().starts_with("9999-"), "{far}");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2026-13-01",
            "2026-11-24T16:52:29.",
            "2026-11-24T16:52:29+0",
            "tomorrow",
            "2026-11-24T16:52:29x",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip_over_many_days() {
        let mut t = ts("1969-12-25T23:59:59.5+00:00");
        for _ in 0..2000 {
            let s = t.to_string();
            assert_eq!(ts(&s), t, "{s}");
            t = t + Duration::from_secs(86_400 * 37 + 3_607);
        }
    }
}
