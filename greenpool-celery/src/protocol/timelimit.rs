//! The `timelimit` header: `[hard, soft]` seconds, each a number or null.

use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

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
    /// The hard limit as a duration, if it is set and positive.
    pub fn hard_duration(&self) -> Option<Duration> {
        positive(self.hard)
    }

    /// The soft limit as a duration, if it is set and positive.
    pub fn soft_duration(&self) -> Option<Duration> {
        positive(self.soft)
    }
}

fn positive(v: Option<f64>) -> Option<Duration> {
    v.filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
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
    fn durations_ignore_zero_and_negative() {
        let t = parse("[0, -1]");
        assert_eq!(t.hard_duration(), None);
        assert_eq!(t.soft_duration(), None);
        assert_eq!(
            parse("[2.5, null]").hard_duration(),
            Some(Duration::from_millis(2500))
        );
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
