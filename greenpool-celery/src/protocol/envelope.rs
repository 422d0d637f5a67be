//! kombu's Redis envelope: the JSON object pushed onto a queue list, with
//! the task body base64-encoded inside it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::lenient::{self, null_default};
use crate::error::ProtocolError;

/// Where the producer sent a message: kombu requires both keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// Exchange name; `""` is the default exchange (route by queue name).
    #[serde(default, deserialize_with = "lenient::string_or_empty")]
    pub exchange: String,
    /// Routing key; with the default exchange, the queue name.
    #[serde(default, deserialize_with = "lenient::string_or_empty")]
    pub routing_key: String,
    /// Set by kombu when it puts a message back on its queue.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::flag"
    )]
    pub redelivered: Option<bool>,
}

/// The envelope's `properties`.
///
/// Each property of the wrong type reads as absent instead of making the
/// whole message unreadable (which would lose its delivery tag and task
/// id), and the priority is read as kombu reads it (see
/// [`kombu_priority`](crate::protocol::kombu_priority)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// The task id again.
    #[serde(default, deserialize_with = "lenient::string")]
    pub correlation_id: Option<String>,
    /// The client's reply queue / oid (used by the RPC backend).
    #[serde(default, deserialize_with = "lenient::string")]
    pub reply_to: Option<String>,
    /// 2 = persistent, 1 = transient.
    #[serde(default, deserialize_with = "lenient::delivery_mode")]
    pub delivery_mode: Option<u8>,
    /// Exchange and routing key the message was published with.
    #[serde(default, deserialize_with = "lenient::object")]
    pub delivery_info: DeliveryInfo,
    /// 0–9; on Redis a lower number is served first. Read as kombu does:
    /// `int()` of the value clamped to 0–9, absent when `int()` fails.
    #[serde(default, deserialize_with = "lenient::priority")]
    pub priority: Option<u8>,
    /// `"base64"` (kombu's default) or absent for a plain text body.
    #[serde(default, deserialize_with = "lenient::string")]
    pub body_encoding: Option<String>,
    /// The kombu delivery tag, a UUID string that names the message in the
    /// `unacked` hash.
    #[serde(default, deserialize_with = "lenient::string")]
    pub delivery_tag: Option<String>,
}

/// The JSON object kombu's Redis transport stores in a queue list.
///
/// `headers` is kept as raw JSON here; [`crate::TaskMessage::decode`] reads
/// it into typed fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The serialised body; base64 text when `properties.body_encoding` is
    /// `"base64"`.
    pub body: String,
    /// Character set of the body, `"utf-8"`.
    #[serde(rename = "content-encoding", default = "utf8")]
    pub content_encoding: String,
    /// Serializer of the body, `"application/json"`.
    #[serde(rename = "content-type", default = "json_type")]
    pub content_type: String,
    /// Message headers (the task headers in protocol v2, empty in v1).
    #[serde(default, deserialize_with = "null_default")]
    pub headers: Map<String, Value>,
    /// Message properties.
    #[serde(default, deserialize_with = "null_default")]
    pub properties: Properties,
}

/// The body text of a [`WireEnvelope`]: where it sits in the raw queue
/// entry (the usual case, no copy), or its own text when the JSON string
/// held escapes.
#[derive(Debug)]
pub(crate) enum BodyText {
    /// `raw[start..start + len]`.
    Span { start: usize, len: usize },
    /// The unescaped text.
    Owned(String),
}

impl BodyText {
    /// The body's text, given the raw entry it was parsed from.
    pub(crate) fn text<'a>(&'a self, raw: &'a [u8]) -> &'a [u8] {
        match self {
            BodyText::Span { start, len } => start
                .checked_add(*len)
                .and_then(|end| raw.get(*start..end))
                .unwrap_or_default(),
            BodyText::Owned(s) => s.as_bytes(),
        }
    }
}

/// The envelope as the worker reads it: headers straight into typed
/// fields, the body left in place in the raw entry.
///
/// Reading succeeds for every JSON object, so that the delivery tag and
/// the task id survive anything odd in the rest of the message: a header
/// of the wrong type is kept in `problem` (with whatever headers could be
/// read), and so is a `NaN` or `Infinity` token (which Python's json
/// writes and strict JSON does not allow).
#[derive(Debug)]
pub(crate) struct WireEnvelope {
    pub(crate) body: Option<BodyText>,
    pub(crate) content_type: String,
    pub(crate) content_encoding: Option<String>,
    pub(crate) headers: super::headers::TaskHeaders,
    pub(crate) properties: Properties,
    /// Why the envelope cannot be run although it could be read.
    pub(crate) problem: Option<ProtocolError>,
}

/// The envelope borrowed from the raw entry, its headers read as `H`:
/// typed in the same pass ([`EnvelopeTyped`], the common case, tried
/// first) or left as raw JSON ([`EnvelopeRef`], read when anything in the
/// typed pass fails; its result is the one reported).
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a, H: Deserialize<'de>"))]
struct EnvelopeOf<'a, H> {
    #[serde(borrow, default, deserialize_with = "lenient::cow_str")]
    body: Option<Cow<'a, str>>,
    #[serde(rename = "content-type", default, deserialize_with = "lenient::string")]
    content_type: Option<String>,
    #[serde(
        rename = "content-encoding",
        default,
        deserialize_with = "lenient::string"
    )]
    content_encoding: Option<String>,
    #[serde(default = "none")]
    headers: Option<H>,
    #[serde(default, deserialize_with = "lenient::object")]
    properties: Properties,
}

/// Headers left as raw JSON, read on their own afterwards.
type EnvelopeRef<'a> = EnvelopeOf<'a, &'a RawValue>;

/// Headers typed in the same pass as the envelope.
type EnvelopeTyped<'a> = EnvelopeOf<'a, super::headers::TaskHeaders>;

fn none<H>() -> Option<H> {
    None
}

impl WireEnvelope {
    /// Reads a queue entry.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Envelope`] when the entry is not a JSON object
    /// (even with Python's `NaN`/`Infinity` tokens allowed).
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, ProtocolError> {
        // serde would also read a struct from a JSON array; kombu's
        // envelope is an object.
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ProtocolError::Envelope(serde::de::Error::custom(
                "the entry is not a JSON object",
            )));
        }
        // UTF-8 text is checked once here rather than string by string.
        if let Ok(text) = std::str::from_utf8(raw) {
            // The headers straight into their fields; on any failure the
            // entry is read again below, which decides the result.
            if let Ok(t) = serde_json::from_str::<EnvelopeTyped<'_>>(text) {
                return Ok(Self::own_typed(t, raw));
            }
        }
        match serde_json::from_slice::<EnvelopeRef<'_>>(raw) {
            Ok(r) => Ok(Self::own(r, raw, None)),
            Err(e) => {
                let Some(clean) = super::nonfinite::replace_with_null(raw) else {
                    return Err(ProtocolError::Envelope(e));
                };
                match serde_json::from_slice::<EnvelopeRef<'_>>(&clean) {
                    // Read again with the tokens as null, only to report
                    // the failure under the right task id.
                    Ok(r) => Ok(Self::own(r, &[], Some(ProtocolError::NonFinite))),
                    Err(_) => Err(ProtocolError::Envelope(e)),
                }
            }
        }
    }

    /// Reads an envelope already held as fields (built from a
    /// transport's own message, as AMQP carries it), without copying its
    /// body: the body is the span of all of `env.body`, so the `raw`
    /// that goes with it is `env.body`'s bytes. Headers of the wrong
    /// type are salvaged and reported as [`parse`](Self::parse) reports
    /// them.
    pub(crate) fn of_fields(env: &Envelope) -> Self {
        use serde::de::IntoDeserializer;
        let (headers, problem) =
            match super::headers::TaskHeaders::deserialize((&env.headers).into_deserializer()) {
                Ok(h) => (h, None),
                Err(e) => {
                    let text = serde_json::to_string(&env.headers).unwrap_or_default();
                    (
                        super::headers::TaskHeaders::salvage(&text),
                        Some(ProtocolError::Headers(e)),
                    )
                }
            };
        WireEnvelope {
            body: Some(BodyText::Span {
                start: 0,
                len: env.body.len(),
            }),
            content_type: env.content_type.clone(),
            content_encoding: Some(env.content_encoding.clone()),
            headers,
            properties: env.properties.clone(),
            problem,
        }
    }

    fn own_typed(t: EnvelopeTyped<'_>, raw: &[u8]) -> Self {
        WireEnvelope {
            body: Self::body_text(t.body, raw),
            content_type: t.content_type.unwrap_or_else(json_type),
            content_encoding: t.content_encoding,
            headers: t.headers.unwrap_or_default(),
            properties: t.properties,
            problem: None,
        }
    }

    /// Where the body sits in `raw`, or its own text.
    fn body_text(body: Option<Cow<'_, str>>, raw: &[u8]) -> Option<BodyText> {
        let base = raw.as_ptr() as usize;
        body.map(|b| match b {
            Cow::Borrowed(s) => {
                let at = (s.as_ptr() as usize).wrapping_sub(base);
                if !raw.is_empty() && at <= raw.len() && raw.len() - at >= s.len() {
                    BodyText::Span {
                        start: at,
                        len: s.len(),
                    }
                } else {
                    BodyText::Owned(s.to_owned())
                }
            }
            Cow::Owned(s) => BodyText::Owned(s),
        })
    }

    fn own(r: EnvelopeRef<'_>, raw: &[u8], problem: Option<ProtocolError>) -> Self {
        let body = Self::body_text(r.body, raw);
        let (headers, header_problem) = match r.headers {
            None => (super::headers::TaskHeaders::default(), None),
            Some(h) => match serde_json::from_str(h.get()) {
                Ok(h) => (h, None),
                Err(e) => (
                    super::headers::TaskHeaders::salvage(h.get()),
                    Some(ProtocolError::Headers(e)),
                ),
            },
        };
        WireEnvelope {
            body,
            content_type: r.content_type.unwrap_or_else(json_type),
            content_encoding: r.content_encoding,
            headers,
            properties: r.properties,
            problem: problem.or(header_problem),
        }
    }
}

fn utf8() -> String {
    "utf-8".to_owned()
}

fn json_type() -> String {
    "application/json".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_stays_in_the_raw_entry() {
        let body = "QUJD".repeat(1 << 18);
        let raw = format!(
            r#"{{"body": "{body}", "headers": {{"task": "t", "id": "i"}}, "properties": {{"delivery_tag": "x"}}}}"#
        );
        let w = WireEnvelope::parse(raw.as_bytes()).unwrap();
        let Some(text) = &w.body else {
            panic!("no body")
        };
        assert!(matches!(text, BodyText::Span { len, .. } if *len == body.len()));
        assert_eq!(text.text(raw.as_bytes()), body.as_bytes());
        // An escaped body cannot be borrowed; it is unescaped once.
        let w = WireEnvelope::parse(br#"{"body": "a\/b"}"#).unwrap();
        assert!(matches!(&w.body, Some(BodyText::Owned(s)) if s == "a/b"));
    }

    #[test]
    fn odd_fields_keep_the_tag_and_the_task_id() {
        let raw = br#"{"body": 7, "content-encoding": ["x"], "headers": {"task": "t", "id": "i1", "retries": "many"},
            "properties": {"delivery_tag": "tag1", "priority": "high", "delivery_mode": 300,
            "correlation_id": 5, "delivery_info": "nowhere"}}"#;
        let w = WireEnvelope::parse(raw).unwrap();
        assert_eq!(w.properties.delivery_tag.as_deref(), Some("tag1"));
        assert_eq!(w.properties.priority, None);
        assert_eq!(w.properties.delivery_mode, None);
        assert_eq!(w.properties.correlation_id, None);
        assert_eq!(w.properties.delivery_info, DeliveryInfo::default());
        assert_eq!(w.headers.id, "i1");
        assert!(matches!(w.problem, Some(ProtocolError::Headers(_))));
        assert!(w.body.is_none());
    }

    #[test]
    fn python_nan_tokens_are_reported_under_the_task_id() {
        let raw = br#"{"body": "", "headers": {"task": "t", "id": "i2", "timelimit": [NaN, null]},
            "properties": {"delivery_tag": "tag2"}}"#;
        let w = WireEnvelope::parse(raw).unwrap();
        assert_eq!(w.properties.delivery_tag.as_deref(), Some("tag2"));
        assert_eq!(w.headers.id, "i2");
        assert!(matches!(w.problem, Some(ProtocolError::NonFinite)));
        assert!(WireEnvelope::parse(b"NaN").is_err());
        assert!(WireEnvelope::parse(b"[1, 2]").is_err());
    }
}

/// Instruction-count harness for the envelope read: run under
/// `valgrind --tool=callgrind` with `GREENPOOL_PARSE_LOOPS` set (compare
/// two loop counts to get the cost of one parse).
#[cfg(test)]
mod cost {
    #[test]
    #[ignore = "a profiling harness, not a test"]
    fn parse_loop() {
        let loops: usize = std::env::var("GREENPOOL_PARSE_LOOPS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        let msg = crate::TaskMessage::new(
            "greenpool.add",
            vec![serde_json::json!(12345), serde_json::json!(1)],
            serde_json::Map::new(),
        );
        let raw = msg.encode().unwrap_or_default();
        eprintln!("message: {} bytes", raw.len());
        for _ in 0..loops {
            let w = super::WireEnvelope::parse(std::hint::black_box(raw.as_bytes()));
            assert!(std::hint::black_box(w).is_ok());
        }
    }
}
