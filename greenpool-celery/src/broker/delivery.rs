//! One message as the fetch hands it out.

use serde::de::Error as _;

use crate::error::ProtocolError;
use crate::protocol::WireEnvelope;

/// One message taken off a queue.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The queue it came from.
    pub(crate) queue: String,
    /// The envelope text as the producer pushed it (bytes that are not
    /// UTF-8 are replaced, for the log line only: such a message is
    /// refused).
    pub(crate) raw: String,
    /// Its delivery tag; `None` when none could be found (then it was not
    /// recorded in `unacked` and is only to be logged).
    pub(crate) tag: Option<String>,
    /// The envelope, parsed once here.
    pub(crate) parsed: Result<WireEnvelope, ProtocolError>,
}

impl Delivery {
    /// Reads a popped message from its bytes. The bytes become the raw
    /// text without a copy when they are UTF-8.
    pub(crate) fn read(queue: String, bytes: Vec<u8>, tag: String) -> Self {
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
        Delivery {
            queue,
            raw,
            tag: (!tag.is_empty()).then_some(tag),
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
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) oversized: Vec<Oversized>,
}

impl Fetched {
    /// Nothing was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.oversized.is_empty()
    }

    /// Reads the fetch script's reply (see [`crate::scripts::FETCH`]).
    pub(crate) fn from_reply(reply: Vec<redis::Value>, queues: &[String]) -> Self {
        use redis::Value;
        let mut out = Fetched::default();
        let mut it = reply.into_iter();
        while let (Some(q), Some(body), Some(tag)) = (it.next(), it.next(), it.next()) {
            let queue = match q {
                Value::Int(i) => usize::try_from(i)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| queues.get(i))
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let tag = match tag {
                Value::BulkString(b) => String::from_utf8(b).unwrap_or_default(),
                _ => String::new(),
            };
            match body {
                Value::BulkString(bytes) => out.deliveries.push(Delivery::read(queue, bytes, tag)),
                Value::Int(size) => out.oversized.push(Oversized {
                    queue,
                    size: u64::try_from(size).unwrap_or(0),
                    id: (!tag.is_empty()).then_some(tag),
                }),
                other => tracing::error!("fetch script returned an unexpected value: {other:?}"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn reads_messages_bad_bytes_and_oversized_entries() {
        let queues = vec!["a".to_owned(), "b".to_owned()];
        let good = br#"{"body": "", "headers": {}, "properties": {"delivery_tag": "t1"}}"#;
        let reply = vec![
            Value::Int(2),
            Value::BulkString(good.to_vec()),
            Value::BulkString(b"t1".to_vec()),
            Value::Int(1),
            Value::BulkString(b"{\"body\": \"\xff\xfe\"}".to_vec()),
            Value::BulkString(Vec::new()),
            Value::Int(1),
            Value::Int(99_000_000),
            Value::BulkString(b"id-1".to_vec()),
        ];
        let f = Fetched::from_reply(reply, &queues);
        assert_eq!(f.deliveries.len(), 2);
        assert_eq!(f.deliveries[0].queue, "b");
        assert_eq!(f.deliveries[0].tag.as_deref(), Some("t1"));
        assert!(f.deliveries[0].parsed.is_ok());
        let bad = &f.deliveries[1];
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
        assert_eq!(
            f.oversized,
            [Oversized {
                queue: "a".to_owned(),
                size: 99_000_000,
                id: Some("id-1".to_owned())
            }]
        );
    }
}
