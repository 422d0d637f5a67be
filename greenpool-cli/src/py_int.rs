//! Python's `int` addition on JSON integers of any size, so that
//! `greenpool.add(2**200, 1)` answers exactly as Python does.
//!
//! The worker reads integers beyond 64 bits exactly (serde_json's
//! `arbitrary_precision`); their text is added digit by digit here.

use serde_json::Number;

/// A JSON number's text when it is an integer (no fraction, no exponent).
fn integer_text(n: &Number) -> Option<String> {
    let text = n.to_string();
    let digits = text.strip_prefix('-').unwrap_or(&text);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// Splits `-123` into (true, [3, 2, 1]): the sign and the digits, least
/// significant first, without leading zeros.
fn split(text: &str) -> (bool, Vec<u8>) {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let mut out: Vec<u8> = digits.bytes().rev().map(|b| b - b'0').collect();
    while out.last() == Some(&0) {
        out.pop();
    }
    (negative && !out.is_empty(), out)
}

fn add_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0u8;
    for i in 0..a.len().max(b.len()) {
        let s = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
        out.push(s % 10);
        carry = s / 10;
    }
    if carry > 0 {
        out.push(carry);
    }
    out
}

/// `a - b` for magnitudes with `a >= b`.
fn sub_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0u8;
    for (i, &da) in a.iter().enumerate() {
        let db = b.get(i).copied().unwrap_or(0) + borrow;
        if da >= db {
            out.push(da - db);
            borrow = 0;
        } else {
            out.push(da + 10 - db);
            borrow = 1;
        }
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

fn cmp_magnitudes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.iter().rev().cmp(b.iter().rev()))
}

/// `a + b` when both are integers, exactly; `None` when either is not an
/// integer.
pub(crate) fn add(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(s) = x.checked_add(y) {
            return Some(Number::from(s));
        }
    }
    let (na, ma) = split(&integer_text(a)?);
    let (nb, mb) = split(&integer_text(b)?);
    let (negative, magnitude) = if na == nb {
        (na, add_magnitudes(&ma, &mb))
    } else if cmp_magnitudes(&ma, &mb).is_ge() {
        (na, sub_magnitudes(&ma, &mb))
    } else {
        (nb, sub_magnitudes(&mb, &ma))
    };
    let mut text = String::with_capacity(magnitude.len() + 1);
    if negative && !magnitude.is_empty() {
        text.push('-');
    }
    if magnitude.is_empty() {
        text.push('0');
    }
    text.extend(magnitude.iter().rev().map(|d| char::from(b'0' + d)));
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        serde_json::from_str(s).unwrap()
    }

    fn sum(a: &str, b: &str) -> String {
        add(&n(a), &n(b)).unwrap().to_string()
    }

    #[test]
    fn adds_like_python_int() {
        // 2**200 + 1
        assert_eq!(
            sum(
                "1606938044258990275541962092341162602522202993782792835301376",
                "1"
            ),
            "1606938044258990275541962092341162602522202993782792835301377"
        );
        assert_eq!(sum("9223372036854775807", "1"), "9223372036854775808");
        assert_eq!(sum("-9223372036854775808", "-1"), "-9223372036854775809");
        assert_eq!(
            sum("100000000000000000000000", "-100000000000000000000001"),
            "-1"
        );
        assert_eq!(
            sum("100000000000000000000000", "-100000000000000000000000"),
            "0"
        );
        assert_eq!(sum("-5", "3"), "-2");
        assert_eq!(sum("2", "3"), "5");
        assert!(add(&n("1.5"), &n("1")).is_none());
        assert!(add(&n("1e30"), &n("1")).is_none());
    }
}
