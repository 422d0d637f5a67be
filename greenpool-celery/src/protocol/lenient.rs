//! Readers for envelope properties that never fail: a property of the
//! wrong type reads as absent, so that one odd field cannot make a whole
//! message unreadable (and so lose its delivery tag and task id).
//!
//! The priority follows kombu's Redis transport: Python's `int()` of the
//! value, clamped to 0–9, and the default (0) when `int()` raises.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Reads `null` as the type's default.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// kombu's lowest and highest Redis priority.
const MAX_PRIORITY: i64 = 9;

/// kombu's `_get_message_priority`: `int(priority)` clamped to 0–9, or
/// `None` (the default, 0) when `int()` would raise: null, a string that is
/// not an integer, a list, NaN or an infinity.
///
/// ```
/// use greenpool_celery::protocol::kombu_priority;
/// use serde_json::json;
/// assert_eq!(kombu_priority(&json!(5)), Some(5));
/// assert_eq!(kombu_priority(&json!(300)), Some(9));
/// assert_eq!(kombu_priority(&json!(-4)), Some(0));
/// assert_eq!(kombu_priority(&json!(7.9)), Some(7));
/// assert_eq!(kombu_priority(&json!(" 3 ")), Some(3));
/// assert_eq!(kombu_priority(&json!(true)), Some(1));
/// assert_eq!(kombu_priority(&json!("high")), None);
/// assert_eq!(kombu_priority(&json!(null)), None);
/// ```
pub fn kombu_priority(v: &Value) -> Option<u8> {
    match v {
        Value::Bool(b) => Some(u8::from(*b)),
        Value::Number(n) => priority_of_number(&n.to_string()),
        Value::String(s) => priority_of_int_text(s.trim()),
        _ => None,
    }
}

fn clamp(p: i64) -> u8 {
    // In 0..=9 after the clamp, so the cast is exact.
    p.clamp(0, MAX_PRIORITY) as u8
}

/// `int()` of a JSON number's text: integers exactly (any size), floats
/// truncated toward zero.
fn priority_of_number(text: &str) -> Option<u8> {
    if let Some(p) = priority_of_int_text(text) {
        return Some(p);
    }
    let f: f64 = text.parse().ok()?;
    if !f.is_finite() {
        // int(inf) raises; 1e400 reads as inf in Python.
        return None;
    }
    let t = f.trunc();
    Some(if t >= 9.0 {
        9
    } else if t <= 0.0 {
        0
    } else {
        clamp(t as i64)
    })
}

/// `int()` of text holding an integer (an optional sign, digits, Python's
/// `_` separators): clamped, however many digits it has.
fn priority_of_int_text(text: &str) -> Option<u8> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let valid = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if !valid {
        return None;
    }
    let nonzero = digits.bytes().any(|b| matches!(b, b'1'..=b'9'));
    if negative || !nonzero {
        return Some(0);
    }
    let value: i64 = digits
        .bytes()
        .filter(u8::is_ascii_digit)
        .try_fold(0i64, |acc, d| {
            acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
        .unwrap_or(i64::MAX);
    Some(clamp(value))
}

/// Reads any JSON value as a string property: strings as themselves,
/// anything else as absent.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(cow_str(d)?.map(Cow::into_owned))
}

/// Reads a string that may be borrowed from the input (the body, which
/// can be large): strings as themselves, anything else as absent.
pub(crate) fn cow_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(s)))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(s.to_owned())))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(s)))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// Reads a JSON object into `T` (whose fields are lenient themselves), and
/// any other JSON value as `T::default()`, in one pass.
pub(crate) fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<T, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(T::default())
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// Reads a string field that must not fail: anything but a string reads
/// as empty.
pub(crate) fn string_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(string(d)?.unwrap_or_default())
}

/// Reads an optional flag: anything but a boolean reads as absent.
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    d.deserialize_any(Scalar(|v: Read<'_>| match v {
        Read::Bool(b) => Some(b),
        Read::Value(v) => v.as_bool(),
        Read::U64(_) | Read::I64(_) | Read::Str(_) | Read::Null => None,
    }))
}

/// Reads the priority property as kombu does (see [`kombu_priority`]).
pub(crate) fn priority<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    d.deserialize_any(Scalar(|v: Read<'_>| match v {
        Read::Bool(b) => Some(u8::from(b)),
        // In 0..=9 after the `min`, so the cast is exact.
        Read::U64(n) => Some(n.min(MAX_PRIORITY as u64) as u8),
        Read::I64(n) => Some(clamp(n)),
        Read::Str(s) => priority_of_int_text(s.trim()),
        Read::Null => None,
        Read::Value(v) => kombu_priority(v),
    }))
}

/// Reads `delivery_mode` (1 or 2); anything else reads as absent.
pub(crate) fn delivery_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    d.deserialize_any(Scalar(|v: Read<'_>| {
        let m = match v {
            Read::U64(n) => Some(n),
            Read::I64(n) => u64::try_from(n).ok(),
            Read::Value(v) => v.as_u64(),
            Read::Bool(_) | Read::Str(_) | Read::Null => None,
        };
        m.and_then(|m| u8::try_from(m).ok())
    }))
}

/// One JSON value as [`Scalar`] hands it over: the plain scalars as they
/// come from the deserializer, anything else read into a [`Value`].
enum Read<'a> {
    Bool(bool),
    U64(u64),
    I64(i64),
    Str(&'a str),
    Null,
    Value(&'a Value),
}

/// Reads one JSON value for a function of [`Read`], without building a
/// [`Value`] for the plain scalars (strings, booleans, null, integers
/// that fit 64 bits). Arrays, objects, floats and the numbers that
/// `arbitrary_precision` hands over as a map are read into a [`Value`]
/// exactly as `Value::deserialize` reads them (same depth limit, same
/// errors).
struct Scalar<F>(F);

impl<'de, T, F: FnOnce(Read<'_>) -> Option<T>> Visitor<'de> for Scalar<F> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok((self.0)(Read::Bool(b)))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok((self.0)(Read::I64(n)))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok((self.0)(Read::U64(n)))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        let v = serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number);
        Ok((self.0)(Read::Value(&v)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok((self.0)(Read::Str(s)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((self.0)(Read::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((self.0)(Read::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let v = Value::deserialize(d)?;
        Ok((self.0)(Read::Value(&v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok((self.0)(Read::Value(&v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok((self.0)(Read::Value(&v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn priorities_follow_python_int_and_kombu_clamp() {
        let cases = [
            (json!(0), Some(0)),
            (json!(9), Some(9)),
            (json!(10), Some(9)),
            (json!(255), Some(9)),
            (json!(256), Some(9)),
            (json!(-1), Some(0)),
            (json!(2.999), Some(2)),
            (json!(-0.5), Some(0)),
            (json!(1e300), Some(9)),
            (json!(-1e300), Some(0)),
            (json!("4"), Some(4)),
            (json!("-4"), Some(0)),
            (json!("1_0"), Some(9)),
            (json!("4.5"), None),
            (json!("_4"), None),
            (json!(""), None),
            (json!([1]), None),
            (json!({"p": 1}), None),
            (json!(false), Some(0)),
        ];
        for (v, want) in cases {
            assert_eq!(kombu_priority(&v), want, "{v}");
        }
        let huge: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert_eq!(kombu_priority(&huge), Some(9));
        let huge_neg: Value = serde_json::from_str("-123456789012345678901234567890").unwrap();
        assert_eq!(kombu_priority(&huge_neg), Some(0));
        let inf: Value = serde_json::from_str("1e400").unwrap();
        assert_eq!(kombu_priority(&inf), None);
    }

    #[test]
    fn scalar_readers_match_the_value_readers() {
        #[derive(Deserialize)]
        struct P {
            #[serde(deserialize_with = "priority")]
            p: Option<u8>,
            #[serde(deserialize_with = "delivery_mode")]
            m: Option<u8>,
            #[serde(deserialize_with = "flag")]
            f: Option<bool>,
        }
        let values = [
            "0",
            "9",
            "10",
            "2",
            "1",
            "255",
            "256",
            "300",
            "-1",
            "-0",
            "-9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "-123456789012345678901234567890",
            "2.999",
            "2.0",
            "-0.5",
            "1e300",
            "1e400",
            "1e0",
            "\"4\"",
            "\" 3 \"",
            "\"-4\"",
            "\"1_0\"",
            "\"high\"",
            "\"\"",
            "\"\\u0033\"",
            "true",
            "false",
            "null",
            "[1]",
            "[]",
            "{}",
            "{\"p\": 1}",
        ];
        for text in values {
            let v: Value = serde_json::from_str(text).unwrap();
            let old_m = v.as_u64().and_then(|m| u8::try_from(m).ok());
            let old_f = serde_json::from_value::<bool>(v.clone()).ok();
            let doc = format!(r#"{{"p": {text}, "m": {text}, "f": {text}}}"#);
            let got: P = serde_json::from_str(&doc).unwrap();
            assert_eq!(got.p, kombu_priority(&v), "priority {text}");
            assert_eq!(got.m, old_m, "delivery_mode {text}");
            assert_eq!(got.f, old_f, "flag {text}");
            let got: P = serde_json::from_slice(doc.as_bytes()).unwrap();
            assert_eq!(got.p, kombu_priority(&v), "priority {text}");
        }
        // The depth limit is the one `Value` has.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let doc = format!(r#"{{"p": {deep}, "m": 1, "f": true}}"#);
        assert!(serde_json::from_str::<P>(&doc).is_err());
        assert!(serde_json::from_str::<Value>(&format!("[{deep}]")).is_err());
    }
}
