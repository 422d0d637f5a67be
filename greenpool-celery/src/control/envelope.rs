//! kombu's Redis envelope for messages the worker publishes itself:
//! control replies and events.

use serde_json::{json, Map, Value};

/// Encodes `body` as kombu publishes it on Redis: JSON, base64 body,
/// `delivery_info` naming `exchange` and `routing_key`, a fresh delivery
/// tag, and the given headers.
pub(crate) fn encode(
    body: &Value,
    headers: Map<String, Value>,
    exchange: &str,
    routing_key: &str,
    delivery_mode: u8,
) -> String {
    let body = crate::protocol::base64::encode(body.to_string().as_bytes());
    json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": crate::uuid::uuid4(),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_public_envelope() {
        let raw = encode(
            &json!({"w1@h": {"ok": "pong"}}),
            Map::new(),
            "reply.celery.pidbox",
            "abc",
            1,
        );
        let env: crate::Envelope = serde_json::from_str(&raw).unwrap();
        let body = crate::protocol::base64::decode(env.body.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"w1@h": {"ok": "pong"}}));
        assert_eq!(env.properties.delivery_info.routing_key, "abc");
    }
}
