//! Standard base64 (RFC 4648), the `body_encoding` kombu's Redis
//! transport puts inside its JSON envelope, through the `base64` crate.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use crate::error::ProtocolError;

/// The standard alphabet; padding written, and optional when read (as
/// kombu's producers always pad, but hand-made messages may not).
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes `data` as padded standard base64.
pub(crate) fn encode(data: &[u8]) -> String {
    ENGINE.encode(data)
}

/// Decodes standard base64. ASCII whitespace (line breaks of MIME-style
/// producers) is skipped, as Python's decoder does.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let result = if text.iter().any(u8::is_ascii_whitespace) {
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        ENGINE.decode(compact)
    } else {
        ENGINE.decode(text)
    };
    result.map_err(|e| {
        let (position, reason) = match e {
            base64::DecodeError::InvalidByte(at, _) => {
                (at, "character outside the base64 alphabet")
            }
            base64::DecodeError::InvalidLength(len) => (len, "truncated input"),
            base64::DecodeError::InvalidLastSymbol(at, _) => {
                (at, "last character has bits set that do not fit")
            }
            base64::DecodeError::InvalidPadding => (text.len(), "misplaced padding"),
        };
        ProtocolError::Base64 { position, reason }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_up_to_nine() {
        let data: Vec<u8> = (0u8..=255).collect();
        for len in 0..10 {
            let enc = encode(&data[..len]);
            assert_eq!(enc.len() % 4, 0, "len {len}");
            assert_eq!(decode(enc.as_bytes()).unwrap(), &data[..len], "len {len}");
        }
    }

    #[test]
    fn matches_known_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(decode(b"Zm9vYg").unwrap(), b"foob");
        assert_eq!(decode(b"Zm9v\nYmFy\n").unwrap(), b"foobar");
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(b"Zm9v!").is_err());
        assert!(decode(b"Z").is_err());
        assert!(decode(b"Zg==Zg").is_err());
    }
}
