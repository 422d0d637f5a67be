//! Python `repr()` of JSON values, for `argsrepr`, `kwargsrepr` and logs.

use std::borrow::Cow;
use std::fmt::Write;

use serde_json::{Map, Value};

fn push_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Appends the Python repr of `v` to `out`.
pub(crate) fn push_repr(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => push_str_repr(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => push_map_repr(out, map),
    }
}

fn push_map_repr(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, item)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_str_repr(out, k);
        out.push_str(": ");
        push_repr(out, item);
    }
    out.push('}');
}

/// Most bytes of a task name shown in a log line.
pub(crate) const LOG_NAME_MAX: usize = 200;

/// Most bytes of an argument or result repr shown in a log line (Celery's
/// `resultrepr_maxsize` default).
pub(crate) const LOG_REPR_MAX: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary) for a log
/// line, with a note of how long it was.
///
/// ```ignore
/// assert_eq!(cut("short", 10), "short");
/// assert_eq!(cut("abcdef", 3), "abc... (6 bytes)");
/// ```
pub(crate) fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &text[..end], text.len()))
}

/// A raw queue entry cut for a log line: its first `max` bytes, with
/// anything that is not UTF-8 replaced.
pub(crate) fn cut_bytes(raw: &[u8], max: usize) -> String {
    let head = String::from_utf8_lossy(raw.get(..max).unwrap_or(raw));
    if raw.len() <= max {
        head.into_owned()
    } else {
        format!("{head}... ({} bytes)", raw.len())
    }
}

/// The Python repr of a JSON value.
pub(crate) fn repr(v: &Value) -> String {
    let mut out = String::new();
    push_repr(&mut out, v);
    out
}

/// The repr of positional arguments as a Python tuple: `(2, 3)`, `(2,)`.
pub(crate) fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, item) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_repr(&mut out, item);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

/// The repr of keyword arguments as a Python dict.
pub(crate) fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    push_map_repr(&mut out, kwargs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_repr() {
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(args_repr(&[json!("a")]), "('a',)");
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(
            repr(&json!([null, true, false, 1.5, "it's", {"k": [1]}])),
            "[None, True, False, 1.5, \"it's\", {'k': [1]}]"
        );
        assert_eq!(repr(&json!("a\nb")), "'a\\nb'");
    }

    #[test]
    fn log_text_is_cut_on_char_boundaries() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("abcdef", 3), "abc... (6 bytes)");
        assert_eq!(cut("ééé", 3), "é... (6 bytes)");
        let name = "x".repeat(1 << 20);
        assert!(cut(&name, LOG_NAME_MAX).len() < LOG_NAME_MAX + 32);
        assert_eq!(cut_bytes(b"ab\xffcd", 3), "ab\u{fffd}... (5 bytes)");
    }
}
