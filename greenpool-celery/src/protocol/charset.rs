//! The envelope's `content-encoding`: the character set of the JSON body.
//!
//! kombu's producers write `utf-8`. UTF-8 (and its ASCII subset, and
//! kombu's `binary`, which JSON bodies are read as UTF-8 under) is read
//! in place; UTF-16 (with or without a byte-order mark, little-endian by
//! default as Python's codec) and Latin-1 are converted; any other
//! character set is refused with a reason.

use std::borrow::Cow;

use crate::error::ProtocolError;

/// The body `bytes` as text in `encoding` (absent: UTF-8).
///
/// # Errors
///
/// [`ProtocolError::ContentEncoding`] for an unknown character set,
/// [`ProtocolError::NotText`] for bytes that are not valid in it.
pub(crate) fn decode<'a>(
    encoding: Option<&str>,
    bytes: Cow<'a, [u8]>,
) -> Result<Cow<'a, str>, ProtocolError> {
    let name = encoding.unwrap_or("utf-8").trim().to_ascii_lowercase();
    let not_text = |reason: String| ProtocolError::NotText {
        encoding: name.clone(),
        reason,
    };
    match name.replace('_', "-").as_str() {
        "" | "utf-8" | "utf8" | "us-ascii" | "ascii" | "binary" => match bytes {
            Cow::Borrowed(b) => std::str::from_utf8(b)
                .map(Cow::Borrowed)
                .map_err(|e| not_text(e.to_string())),
            Cow::Owned(b) => String::from_utf8(b)
                .map(Cow::Owned)
                .map_err(|e| not_text(e.utf8_error().to_string())),
        },
        "utf-16" | "utf16" => {
            let (big_endian, rest) = match bytes.get(..2) {
                Some([0xfe, 0xff]) => (true, &bytes[2..]),
                Some([0xff, 0xfe]) => (false, &bytes[2..]),
                _ => (false, &bytes[..]),
            };
            utf16(rest, big_endian).map(Cow::Owned).map_err(not_text)
        }
        "utf-16le" | "utf-16-le" => utf16(&bytes, false).map(Cow::Owned).map_err(not_text),
        "utf-16be" | "utf-16-be" => utf16(&bytes, true).map(Cow::Owned).map_err(not_text),
        "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" => {
            Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()))
        }
        _ => Err(ProtocolError::ContentEncoding(
            encoding.unwrap_or_default().to_owned(),
        )),
    }
}

fn utf16(bytes: &[u8], big_endian: bool) -> Result<String, String> {
    if bytes.len() % 2 != 0 {
        return Err(format!("odd length {} for UTF-16", bytes.len()));
    }
    let units = bytes.chunks_exact(2).map(|p| {
        let pair = [p[0], p[1]];
        if big_endian {
            u16::from_be_bytes(pair)
        } else {
            u16::from_le_bytes(pair)
        }
    });
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(enc: Option<&str>, bytes: &[u8]) -> Result<String, ProtocolError> {
        decode(enc, Cow::Borrowed(bytes)).map(Cow::into_owned)
    }

    #[test]
    fn reads_the_usual_sets_and_refuses_others() {
        assert_eq!(read(None, b"[1]").unwrap(), "[1]");
        assert_eq!(
            read(Some("UTF-8"), "[\"é\"]".as_bytes()).unwrap(),
            "[\"é\"]"
        );
        let le: Vec<u8> = "[\"☃\"]"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let be: Vec<u8> = "[\"☃\"]"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(read(Some("utf-16"), &le).unwrap(), "[\"☃\"]");
        assert_eq!(read(Some("utf-16-le"), &le).unwrap(), "[\"☃\"]");
        assert_eq!(read(Some("utf-16be"), &be).unwrap(), "[\"☃\"]");
        let mut bom = vec![0xfe, 0xff];
        bom.extend_from_slice(&be);
        assert_eq!(read(Some("utf-16"), &bom).unwrap(), "[\"☃\"]");
        assert_eq!(read(Some("latin-1"), b"[\"\xe9\"]").unwrap(), "[\"é\"]");
        assert!(matches!(
            read(Some("utf-8"), b"[\"\xff\"]"),
            Err(ProtocolError::NotText { .. })
        ));
        assert!(matches!(
            read(Some("utf-16"), b"[1]"),
            Err(ProtocolError::NotText { .. })
        ));
        assert!(matches!(
            read(Some("koi8-r"), b"[1]"),
            Err(ProtocolError::ContentEncoding(e)) if e == "koi8-r"
        ));
    }
}
