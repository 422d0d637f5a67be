//! A decoded task message, and its encoding as a v2 Redis envelope.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::base64;
use super::envelope::{DeliveryInfo, Envelope, Properties, WireEnvelope};
use super::headers::TaskHeaders;
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

/// The v2 body: `[args, kwargs, embed]` (the embed may be missing or null).
#[derive(Deserialize)]
struct BodyV2(
    Vec<Value>,
    Map<String, Value>,
    #[serde(default, deserialize_with = "super::envelope::null_default")] Embed,
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
    /// than JSON, a body of the wrong shape, or a missing `task`/`id`.
    pub fn decode(raw: &str) -> Result<Self, ProtocolError> {
        let wire: WireEnvelope = serde_json::from_str(raw).map_err(ProtocolError::Envelope)?;
        Self::from_wire(wire)
    }

    /// Decodes an already parsed envelope; see [`TaskMessage::decode`].
    ///
    /// # Errors
    ///
    /// As for [`TaskMessage::decode`].
    pub fn from_envelope(envelope: Envelope) -> Result<Self, ProtocolError> {
        let headers: TaskHeaders = serde_json::from_value(Value::Object(envelope.headers))
            .map_err(ProtocolError::Headers)?;
        Self::from_wire(WireEnvelope {
            body: envelope.body,
            content_type: envelope.content_type,
            headers,
            properties: envelope.properties,
        })
    }

    pub(crate) fn from_wire(wire: WireEnvelope) -> Result<Self, ProtocolError> {
        let ct = wire.content_type.as_str();
        if ct != "application/json" && ct != "application/x-json" {
            return Err(ProtocolError::ContentType(wire.content_type));
        }
        let body_bytes = match wire.properties.body_encoding.as_deref() {
            Some("base64") => base64::decode(&wire.body)?,
            None | Some("") => wire.body.into_bytes(),
            Some(other) => return Err(ProtocolError::BodyEncoding(other.to_owned())),
        };
        // v1 has no task header and a dict body; anything else is read as v2.
        let is_v1 = wire.headers.task.is_empty()
            && body_bytes
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{');
        let (headers, args, kwargs, embed) = if is_v1 {
            let body: BodyV1 = serde_json::from_slice(&body_bytes).map_err(ProtocolError::Body)?;
            body.into_v2()
        } else {
            let BodyV2(args, kwargs, embed) =
                serde_json::from_slice(&body_bytes).map_err(ProtocolError::Body)?;
            (wire.headers, args, kwargs, embed)
        };
        if headers.task.is_empty() {
            return Err(ProtocolError::MissingHeader("task"));
        }
        if headers.id.is_empty() {
            return Err(ProtocolError::MissingHeader("id"));
        }
        Ok(TaskMessage {
            headers,
            properties: wire.properties,
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
        let body = serde_json::to_vec(&(&self.args, &self.kwargs, &self.embed))
            .map_err(ProtocolError::Encode)?;
        let headers = match serde_json::to_value(&self.headers).map_err(ProtocolError::Encode)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let mut properties = self.properties.clone();
        properties.body_encoding = Some("base64".to_owned());
        let envelope = Envelope {
            body: base64::encode(&body),
            content_encoding: "utf-8".to_owned(),
            content_type: "application/json".to_owned(),
            headers,
            properties,
        };
        serde_json::to_string(&envelope).map_err(ProtocolError::Encode)
    }
}
