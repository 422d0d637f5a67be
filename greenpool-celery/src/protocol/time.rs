//! ISO-8601 timestamps as Celery writes them in `eta`, `expires` and
//! `date_done`: `2026-11-24T16:52:29.209879+00:00`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ProtocolError;

/// A point in time read from or written to the wire as ISO-8601.
///
/// Parsing accepts `T` or a space between date and time, an optional
/// fraction of up to nine digits, and `Z`, `±HH:MM`, `±HHMM` or no offset
/// (a naive time is taken as UTC, Celery's default timezone). Formatting
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

    /// Whether this time has passed.
    pub fn is_past(self) -> bool {
        self.0 <= SystemTime::now()
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0 + d)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.s.get(self.pos..self.pos + n)?;
        let mut v = 0u32;
        for &c in part {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        self.pos += n;
        Some(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
}

fn parse(text: &str) -> Option<SystemTime> {
    let mut c = Cursor {
        s: text.trim().as_bytes(),
        pos: 0,
    };
    let year = c.digits(4)?;
    let month = c.eat(b'-').then(|| c.digits(2))??;
    let day = c.eat(b'-').then(|| c.digits(2))??;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (mut hour, mut minute, mut second, mut nanos) = (0, 0, 0, 0u32);
    if c.eat(b'T') || c.eat(b' ') {
        hour = c.digits(2)?;
        minute = c.eat(b':').then(|| c.digits(2))??;
        if c.eat(b':') {
            second = c.digits(2)?;
            if c.eat(b'.') || c.eat(b',') {
                let start = c.pos;
                while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                    c.pos += 1;
                }
                let frac = &c.s[start..c.pos];
                if frac.is_empty() {
                    return None;
                }
                for (i, &d) in frac.iter().take(9).enumerate() {
                    nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
                }
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
    }
    let mut offset_secs: i64 = 0;
    match c.peek() {
        None => {}
        Some(b'Z') | Some(b'z') => c.pos += 1,
        Some(sign @ (b'+' | b'-')) => {
            c.pos += 1;
            let oh = c.digits(2)?;
            c.eat(b':');
            let om = c.digits(2)?;
            let off = i64::from(oh * 3600 + om * 60);
            offset_secs = if sign == b'+' { off } else { -off };
        }
        Some(_) => return None,
    }
    if c.pos != c.s.len() {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let base = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Some(base + Duration::from_nanos(u64::from(nanos)))
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
        let (secs, micros) = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
            Err(e) => {
                let d = e.duration();
                let whole = d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0);
                let micros = if d.subsec_nanos() > 0 {
                    1_000_000 - d.subsec_micros()
                } else {
                    0
                };
                (-whole, micros % 1_000_000)
            }
        };
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
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
        assert_eq!(ts("1970-01-01T00:00:00").unix_seconds(), 0.0);
        assert_eq!(ts("2000-03-01").unix_seconds(), 951_868_800.0);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2026-13-01",
            "2026-11-24T16",
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
