//! A decoded task message, and its encoding as a v2 Redis envelope.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::base64;
use super::charset;
use super::envelope::{DeliveryInfo, Envelope, Properties, WireEnvelope};
use super::headers::TaskHeaders;
use super::nonfinite;
use super::signature::Embed;
use super::v1::BodyV1;
use crate::error::ProtocolError;

/// One task request, whichever protocol version it arrived in.
///
/// ```
/// use greenpool_celery::TaskMessage;
/// let msg = TaskMessage::new("tasks.add", vec![2.into(), 3.into()], Default::default());
/// let wire = msg.encode().unwrap();
/// let back = TaskMessage::decode(&wire).unwrap();
/// assert_eq!(back.headers.task, "tasks.add");
/// assert_eq!(back.args, msg.args);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task headers (for v1 messages, filled from the body).
    pub headers: TaskHeaders,
    /// Envelope properties (delivery tag, routing, priority).
    pub properties: Properties,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
}

/// A message that cannot be run: why, and the message as far as it could
/// be read when it names a task id (headers and properties, no arguments).
#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) error: ProtocolError,
    pub(crate) partial: Option<Box<TaskMessage>>,
}

/// The task id and name of a v1 body that does not decode, read with
/// `NaN`/`Infinity` as null.
fn v1_salvage(text: &str) -> TaskHeaders {
    let clean = nonfinite::replace_with_null(text.as_bytes());
    let bytes = clean.as_deref().unwrap_or(text.as_bytes());
    let Ok(map) = serde_json::from_slice::<Map<String, Value>>(bytes) else {
        return TaskHeaders::default();
    };
    let string = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
    TaskHeaders {
        task: string("task").unwrap_or_default(),
        id: string("id").unwrap_or_default(),
        ..TaskHeaders::default()
    }
}

/// The v2 body: `[args, kwargs, embed]` (the embed may be missing or null).
#[derive(Deserialize)]
struct BodyV2(
    Vec<Value>,
    Map<String, Value>,
    #[serde(default, deserialize_with = "super::lenient::null_default")] Embed,
);

impl TaskMessage {
    /// A v2 message for `name` with a fresh task id, routed to the `celery`
    /// queue through the default exchange.
    pub fn new(name: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let id = crate::uuid::uuid4();
        let headers = TaskHeaders {
            lang: Some("py".to_owned()),
            task: name.to_owned(),
            root_id: Some(id.clone()),
            argsrepr: Some(crate::repr::args_repr(&args)),
            kwargsrepr: Some(crate::repr::kwargs_repr(&kwargs)),
            id,
            ..TaskHeaders::default()
        };
        let properties = Properties {
            correlation_id: Some(headers.id.clone()),
            reply_to: Some(crate::uuid::uuid4()),
            delivery_mode: Some(2),
            delivery_info: DeliveryInfo {
                exchange: String::new(),
                routing_key: "celery".to_owned(),
                redelivered: None,
            },
            priority: Some(0),
            body_encoding: Some("base64".to_owned()),
            delivery_tag: Some(crate::uuid::uuid4()),
        };
        TaskMessage {
            headers,
            properties,
            args,
            kwargs,
            embed: Embed::default(),
        }
    }

    /// Decodes a queue entry: the JSON envelope, its base64 body, and the
    /// task headers. Protocol v1 (no `task` header, a dict body) is
    /// converted to v2.
    ///
    /// # Errors
    ///
    /// [`ProtocolError`] for invalid JSON or base64, a content type other
    /// than JSON, a content encoding other than UTF-8/UTF-16, a body of
    /// the wrong shape, `NaN`/`Infinity` values, or a missing `task`/`id`.
    pub fn decode(raw: &str) -> Result<Self, ProtocolError> {
        Self::decode_bytes(raw.as_bytes())
    }

    /// Decodes a queue entry read as bytes; see [`TaskMessage::decode`].
    ///
    /// ```
    /// use greenpool_celery::{ProtocolError, TaskMessage};
    /// assert!(matches!(
    ///     TaskMessage::decode_bytes(b"\xff not json"),
    ///     Err(ProtocolError::Envelope(_))
    /// ));
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`TaskMessage::decode`].
    pub fn decode_bytes(raw: &[u8]) -> Result<Self, ProtocolError> {
        let wire = WireEnvelope::parse(raw)?;
        Self::from_wire(wire, raw).map_err(|r| r.error)
    }

    /// Decodes an already parsed envelope; see [`TaskMessage::decode`].
    ///
    /// # Errors
    ///
    /// As for [`TaskMessage::decode`].
    pub fn from_envelope(envelope: Envelope) -> Result<Self, ProtocolError> {
        Self::from_envelope_ref(&envelope)
    }

    /// Decodes an envelope held as fields, without taking it.
    pub(crate) fn from_envelope_ref(envelope: &Envelope) -> Result<Self, ProtocolError> {
        let wire = WireEnvelope::of_fields(envelope);
        Self::from_wire(wire, envelope.body.as_bytes()).map_err(|r| r.error)
    }

    /// Decodes an envelope read from `raw` (whose body it points into).
    /// On failure, the error comes with the message as far as it could be
    /// read when that names a task id, so that the failure can be stored
    /// under it.
    pub(crate) fn from_wire(wire: WireEnvelope, raw: &[u8]) -> Result<Self, Rejected> {
        let WireEnvelope {
            body,
            content_type,
            content_encoding,
            headers,
            properties,
            problem,
        } = wire;
        let reject = |error: ProtocolError, headers: TaskHeaders, properties: Properties| {
            let partial = (!headers.id.is_empty()).then(|| {
                Box::new(TaskMessage {
                    headers,
                    properties,
                    args: Vec::new(),
                    kwargs: Map::new(),
                    embed: Embed::default(),
                })
            });
            Rejected { error, partial }
        };
        if let Some(e) = problem {
            return Err(reject(e, headers, properties));
        }
        let ct = content_type.as_str();
        if ct != "application/json" && ct != "application/x-json" {
            return Err(reject(
                ProtocolError::ContentType(content_type),
                headers,
                properties,
            ));
        }
        let Some(body) = body else {
            return Err(reject(ProtocolError::MissingBody, headers, properties));
        };
        let text = body.text(raw);
        let decoded = match properties.body_encoding.as_deref() {
            Some("base64") => base64::decode(text).map(Cow::Owned),
            None | Some("") => Ok(Cow::Borrowed(text)),
            Some(other) => Err(ProtocolError::BodyEncoding(other.to_owned())),
        };
        let body_text =
            decoded.and_then(|bytes| charset::decode(content_encoding.as_deref(), bytes));
        let body_text = match body_text {
            Ok(t) => t,
            Err(e) => return Err(reject(e, headers, properties)),
        };
        let body_text: &str = &body_text;
        // v1 has no task header and a dict body; anything else is read as v2.
        let is_v1 = headers.task.is_empty() && body_text.trim_start().starts_with('{');
        let parsed = if is_v1 {
            serde_json::from_str::<BodyV1>(body_text).map(BodyV1::into_v2)
        } else {
            serde_json::from_str::<BodyV2>(body_text)
                .map(|BodyV2(args, kwargs, embed)| (TaskHeaders::default(), args, kwargs, embed))
        };
        let (headers, args, kwargs, embed) = match parsed {
            Ok((v1_headers, args, kwargs, embed)) => {
                let headers = if is_v1 { v1_headers } else { headers };
                (headers, args, kwargs, embed)
            }
            Err(e) => {
                let error = if nonfinite::contains(body_text.as_bytes()) {
                    ProtocolError::NonFinite
                } else {
                    ProtocolError::Body(e)
                };
                let headers = if is_v1 {
                    v1_salvage(body_text)
                } else {
                    headers
                };
                return Err(reject(error, headers, properties));
            }
        };
        if headers.task.is_empty() {
            return Err(reject(
                ProtocolError::MissingHeader("task"),
                headers,
                properties,
            ));
        }
        if headers.id.is_empty() {
            return Err(reject(
                ProtocolError::MissingHeader("id"),
                headers,
                properties,
            ));
        }
        Ok(TaskMessage {
            headers,
            properties,
            args,
            kwargs,
            embed,
        })
    }

    /// Encodes the message as a protocol v2 Redis envelope (JSON text,
    /// base64 body), as Python's `send_task` produces it.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Encode`] if a value cannot be serialised (for
    /// example a map with non-string keys; plain JSON values never fail).
    pub fn encode(&self) -> Result<String, ProtocolError> {
        serde_json::to_string(&self.to_envelope()?).map_err(ProtocolError::Encode)
    }

    /// The message as an [`Envelope`]: protocol v2 headers, the
    /// properties, the JSON body `[args, kwargs, embed]` in base64.
    ///
    /// # Errors
    ///
    /// As for [`TaskMessage::encode`].
    pub fn to_envelope(&self) -> Result<Envelope, ProtocolError> {
        let body = serde_json::to_vec(&(&self.args, &self.kwargs, &self.embed))
            .map_err(ProtocolError::Encode)?;
        let headers = match serde_json::to_value(&self.headers).map_err(ProtocolError::Encode)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let mut properties = self.properties.clone();
        properties.body_encoding = Some("base64".to_owned());
        Ok(Envelope {
            body: base64::encode(&body),
            content_encoding: "utf-8".to_owned(),
            content_type: "application/json".to_owned(),
            headers,
            properties,
        })
    }
}
