//! kombu's Redis envelope: the JSON object pushed onto a queue list, with
//! the task body base64-encoded inside it.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Reads `null` as the type's default.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Where the producer sent a message: kombu requires both keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// Exchange name; `""` is the default exchange (route by queue name).
    #[serde(default, deserialize_with = "null_default")]
    pub exchange: String,
    /// Routing key; with the default exchange, the queue name.
    #[serde(default, deserialize_with = "null_default")]
    pub routing_key: String,
    /// Set by kombu when it puts a message back on its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
}

/// The envelope's `properties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// The task id again.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// The client's reply queue / oid (used by the RPC backend).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// 2 = persistent, 1 = transient.
    #[serde(default)]
    pub delivery_mode: Option<u8>,
    /// Exchange and routing key the message was published with.
    #[serde(default, deserialize_with = "null_default")]
    pub delivery_info: DeliveryInfo,
    /// 0–9; on Redis a lower number is served first.
    #[serde(default)]
    pub priority: Option<u8>,
    /// `"base64"` (kombu's default) or absent for a plain text body.
    #[serde(default)]
    pub body_encoding: Option<String>,
    /// The kombu delivery tag, a UUID string that names the message in the
    /// `unacked` hash.
    #[serde(default)]
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

/// The envelope as the worker reads it: headers straight into typed
/// fields, with no intermediate JSON map.
#[derive(Debug, Deserialize)]
pub(crate) struct WireEnvelope {
    pub(crate) body: String,
    #[serde(rename = "content-type", default = "json_type")]
    pub(crate) content_type: String,
    #[serde(default, deserialize_with = "null_default")]
    pub(crate) headers: super::headers::TaskHeaders,
    #[serde(default, deserialize_with = "null_default")]
    pub(crate) properties: Properties,
}

fn utf8() -> String {
    "utf-8".to_owned()
}

fn json_type() -> String {
    "application/json".to_owned()
}
