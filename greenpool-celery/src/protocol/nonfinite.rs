//! Python's json writes `NaN`, `Infinity` and `-Infinity` for non-finite
//! floats (its default `allow_nan=True`); strict JSON has no such tokens.
//! This finds them outside strings, so that a message holding them is
//! reported as such instead of as "invalid JSON".

/// The tokens Python writes, longest first.
const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];

/// Calls `found(start, len)` for each non-finite token outside strings.
fn scan(text: &[u8], mut found: impl FnMut(usize, usize)) {
    let mut in_string = false;
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if let Some(t) = TOKENS.iter().find(|t| rest.starts_with(t)) {
            found(i, t.len());
            i += t.len();
        } else {
            i += 1;
        }
    }
}

/// Whether `text` holds a non-finite token outside strings.
pub(crate) fn contains(text: &[u8]) -> bool {
    let mut any = false;
    scan(text, |_, _| any = true);
    any
}

/// `text` with every non-finite token outside strings replaced by
/// `null`; `None` when there is none.
pub(crate) fn replace_with_null(text: &[u8]) -> Option<Vec<u8>> {
    let mut spans = Vec::new();
    scan(text, |start, len| spans.push((start, len)));
    if spans.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for (start, len) in spans {
        out.extend_from_slice(text.get(at..start)?);
        out.extend_from_slice(b"null");
        at = start + len;
    }
    out.extend_from_slice(text.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_outside_strings_only() {
        let text = br#"[NaN, "NaN \" Infinity", -Infinity, {"k": Infinity}]"#;
        let clean = replace_with_null(text).unwrap();
        assert_eq!(
            String::from_utf8(clean).unwrap(),
            r#"[null, "NaN \" Infinity", null, {"k": null}]"#
        );
        assert!(contains(text));
        assert!(!contains(br#"["NaN", "Infinity"]"#));
        assert_eq!(replace_with_null(br#"[1, "x"]"#), None);
    }
}
