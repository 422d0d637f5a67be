//! One message as the fetch hands it out.

use super::Received;
use crate::error::ProtocolError;
use crate::protocol::WireEnvelope;

/// One message taken off a queue.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The queue it came from.
    pub(crate) queue: String,
    /// The message as its transport carried it.
    pub(crate) message: Received,
    /// Its delivery tag; `None` when none could be found (then it was not
    /// recorded in `unacked` and is only to be logged).
    pub(crate) tag: Option<String>,
    /// The envelope, parsed once here (its body span points into
    /// [`Received::span_base`]).
    pub(crate) parsed: Result<WireEnvelope, ProtocolError>,
}

impl Delivery {
    /// Reads a taken message from its bytes. The bytes become the raw
    /// text without a copy when they are UTF-8; the delivery tag is the
    /// envelope's `properties.delivery_tag` (a non-empty string), read by
    /// the same parse that reads the rest.
    #[cfg(feature = "redis")]
    pub(crate) fn read(queue: String, bytes: Vec<u8>) -> Self {
        use serde::de::Error as _;
        let (raw, parsed) = match String::from_utf8(bytes) {
            Ok(raw) => {
                let parsed = WireEnvelope::parse(raw.as_bytes());
                (raw, parsed)
            }
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let why = serde_json::Error::custom(format!(
                    "the message is not UTF-8 text (invalid byte at offset {at})"
                ));
                (
                    String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    Err(ProtocolError::Envelope(why)),
                )
            }
        };
        let tag = parsed
            .as_ref()
            .ok()
            .and_then(|w| w.properties.delivery_tag.clone())
            .filter(|t| !t.is_empty());
        Delivery {
            queue,
            message: Received::Text(raw),
            tag,
            parsed,
        }
    }

    /// A message a transport read into an envelope's fields (AMQP), with
    /// the transport's own delivery tag: nothing is written as JSON or
    /// parsed from it.
    #[cfg(feature = "amqp")]
    pub(crate) fn of_fields(
        queue: String,
        tag: String,
        envelope: crate::protocol::Envelope,
    ) -> Self {
        let parsed = Ok(WireEnvelope::of_fields(&envelope));
        Delivery {
            queue,
            message: Received::Fields(Box::new(envelope)),
            tag: Some(tag),
            parsed,
        }
    }
}

/// A message over the size limit: removed inside Redis, never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Oversized {
    /// The queue it came from.
    pub(crate) queue: String,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its task id (the envelope's correlation id), when found.
    pub(crate) id: Option<String>,
}

/// What one fetch took.
#[cfg(feature = "redis")]
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) oversized: Vec<Oversized>,
}

#[cfg(feature = "redis")]
impl Fetched {
    /// Nothing was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.oversized.is_empty()
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_read_from_the_properties_only() {
        let good = br#"{"body": "", "headers": {"delivery_tag": "not-this"}, "properties": {"delivery_tag": "t1"}}"#;
        let d = Delivery::read("a".to_owned(), good.to_vec());
        assert_eq!(d.queue, "a");
        assert_eq!(d.tag.as_deref(), Some("t1"));
        assert!(d.parsed.is_ok());
        // A "properties" key in the headers does not lend its tag.
        let hostile = br#"{"body": "", "headers": {"properties": {"delivery_tag": "evil"}}, "properties": {"delivery_tag": "real"}}"#;
        let d = Delivery::read("a".to_owned(), hostile.to_vec());
        assert_eq!(d.tag.as_deref(), Some("real"));
        let empty = br#"{"body": "", "properties": {"delivery_tag": ""}}"#;
        assert_eq!(Delivery::read("a".to_owned(), empty.to_vec()).tag, None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_one_bad_message() {
        let bad = Delivery::read("b".to_owned(), b"{\"body\": \"\xff\xfe\"}".to_vec());
        assert_eq!(bad.tag, None);
        let why = bad
            .parsed
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            why.contains("not UTF-8") && why.contains("offset 10"),
            "{why}"
        );
    }
}
