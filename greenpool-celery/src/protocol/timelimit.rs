//! The `timelimit` header: `[hard, soft]` seconds, each a number or null.

use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::seconds::{limit_from_secs, SecondsError};

/// Time limits of one task, as sent in `headers.timelimit`.
///
/// On the wire this is the pair **`[hard, soft]`** (hard first), each an
/// int, a float or `null`; the header itself may also be `null`.
///
/// ```
/// use greenpool_celery::TimeLimit;
/// let t: TimeLimit = serde_json::from_str("[30, 2.5]").unwrap();
/// assert_eq!(t.hard, Some(30.0));
/// assert_eq!(t.soft, Some(2.5));
/// assert_eq!(serde_json::to_string(&t).unwrap(), "[30,2.5]");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeLimit {
    /// Hard limit in seconds: the task is killed when it runs longer.
    pub hard: Option<f64>,
    /// Soft limit in seconds: the task is asked to stop.
    pub soft: Option<f64>,
}

impl TimeLimit {
    /// The hard limit as a duration: `None` for no limit (absent, `0` or
    /// `+Infinity`, as Celery reads them).
    ///
    /// # Errors
    ///
    /// [`SecondsError`] for a NaN, negative or out-of-range limit
    /// (`[1e20, null]`): such a request cannot be run.
    pub fn hard_duration(&self) -> Result<Option<Duration>, SecondsError> {
        limit_from_secs("hard time limit", self.hard)
    }

    /// The soft limit as a duration; see [`TimeLimit::hard_duration`].
    ///
    /// # Errors
    ///
    /// As for [`TimeLimit::hard_duration`].
    pub fn soft_duration(&self) -> Result<Option<Duration>, SecondsError> {
        limit_from_secs("soft time limit", self.soft)
    }
}

fn serialize_seconds<S: SerializeTuple>(t: &mut S, v: Option<f64>) -> Result<(), S::Error> {
    match v {
        // Whole seconds go out as ints, as Python clients send them.
        Some(s) if s.fract() == 0.0 && s.abs() < 9.0e15 => t.serialize_element(&(s as i64)),
        other => t.serialize_element(&other),
    }
}

impl Serialize for TimeLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        serialize_seconds(&mut t, self.hard)?;
        serialize_seconds(&mut t, self.soft)?;
        t.end()
    }
}

struct LimitVisitor;

impl<'de> Visitor<'de> for LimitVisitor {
    type Value = TimeLimit;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null or a [hard, soft] pair of numbers or nulls")
    }

    fn visit_unit<E: de::Error>(self) -> Result<TimeLimit, E> {
        Ok(TimeLimit::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<TimeLimit, E> {
        Ok(TimeLimit::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TimeLimit, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TimeLimit, A::Error> {
        let hard: Option<f64> = seq.next_element()?.flatten();
        let soft: Option<f64> = seq.next_element()?.flatten();
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(TimeLimit { hard, soft })
    }
}

impl<'de> Deserialize<'de> for TimeLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LimitVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> TimeLimit {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn reads_every_shape() {
        assert_eq!(parse("null"), TimeLimit::default());
        assert_eq!(parse("[null, null]"), TimeLimit::default());
        assert_eq!(
            parse("[30, 20]"),
            TimeLimit {
                hard: Some(30.0),
                soft: Some(20.0)
            }
        );
        assert_eq!(
            parse("[null, 1.5]"),
            TimeLimit {
                hard: None,
                soft: Some(1.5)
            }
        );
        assert_eq!(parse("[4]").hard, Some(4.0));
        assert!(serde_json::from_str::<TimeLimit>("[1, 2, 3]").is_err());
        assert!(serde_json::from_str::<TimeLimit>("\"x\"").is_err());
    }

    #[test]
    fn durations_refuse_what_cannot_run() {
        let t = parse("[0, null]");
        assert_eq!(t.hard_duration(), Ok(None));
        assert_eq!(t.soft_duration(), Ok(None));
        assert_eq!(
            parse("[2.5, null]").hard_duration(),
            Ok(Some(Duration::from_millis(2500)))
        );
        assert!(parse("[-1, null]").hard_duration().is_err());
        assert!(parse("[1e20, null]").hard_duration().is_err());
        assert!(parse("[1e19, null]").hard_duration().is_err());
        assert!(parse("[null, 1e300]").soft_duration().is_err());
    }

    #[test]
    fn writes_hard_first() {
        let t = TimeLimit {
            hard: Some(30.0),
            soft: None,
        };
        assert_eq!(serde_json::to_string(&t).unwrap(), "[30,null]");
    }
}
