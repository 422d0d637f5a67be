//! A message the worker sends on (a task's retry, the requeue of a
//! rejected message, link callbacks, the next chain step, link errors),
//! addressed as a producer addresses it: to an exchange with a routing
//! key. Each transport routes it its own way: AMQP hands both to the
//! broker; kombu's Redis transport resolves them to queues through the
//! exchange's binding table (see `redis::bindings`).
//!
//! The builders (`request::retry`, `request::follow_up`, `canvas`) know
//! no transport: they fill in the exchange, the routing key, the priority
//! and the message's headers, properties and body. The transport encodes
//! the rest: on Redis the envelope's `delivery_info` and `priority` are
//! set from the [`Publish`], a delivery tag is made when the message has
//! none, and the envelope is pushed as kombu's JSON; on AMQP the headers
//! become the field table, the properties basic properties and the body
//! raw bytes (the envelope's `delivery_info` and `delivery_tag` are not
//! sent).

use crate::protocol::Envelope;

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Publish {
    /// The exchange; `""` is the default exchange, which routes to the
    /// queue named by the routing key.
    pub(crate) exchange: String,
    /// The routing key.
    pub(crate) routing_key: String,
    /// The message priority (0–9), when it has one.
    pub(crate) priority: Option<u8>,
    /// The message: headers, properties, body.
    pub(crate) message: Envelope,
}

impl Publish {
    /// A message to the default exchange, for `queue`.
    pub(crate) fn to_queue(queue: &str, priority: Option<u8>, message: Envelope) -> Self {
        Publish {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            priority,
            message,
        }
    }
}

/// The envelope of `p` (completed in place) as kombu's Redis transport stores it in a queue
/// list: `delivery_info` and `priority` from `p` (a `redelivered` mark is
/// kept), and a fresh delivery tag unless the message keeps its own (a
/// requeue).
///
/// # Errors
///
/// [`ProtocolError::Encode`] when the headers cannot be serialised.
#[cfg(feature = "redis")]
pub(crate) fn kombu_json(p: &mut Publish) -> Result<String, crate::error::ProtocolError> {
    let props = &mut p.message.properties;
    props.delivery_info.exchange.clone_from(&p.exchange);
    props.delivery_info.routing_key.clone_from(&p.routing_key);
    props.priority = p.priority;
    if props.delivery_tag.is_none() {
        props.delivery_tag = Some(crate::uuid::uuid4());
    }
    serde_json::to_string(&p.message).map_err(crate::error::ProtocolError::Encode)
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::protocol::TaskMessage;

    #[test]
    fn redis_envelopes_carry_the_route_and_a_tag() {
        let msg = TaskMessage::new("t.add", vec![serde_json::json!(1)], serde_json::Map::new());
        let mut env = msg.to_envelope().unwrap();
        env.properties.delivery_tag = None;
        env.properties.delivery_info.redelivered = Some(true);
        let mut p = Publish {
            exchange: "ex2".into(),
            routing_key: "rk2".into(),
            priority: Some(4),
            message: env,
        };
        let back = TaskMessage::decode(&kombu_json(&mut p).unwrap()).unwrap();
        assert_eq!(back.headers.id, msg.headers.id);
        assert_eq!(back.args, msg.args);
        let info = &back.properties.delivery_info;
        assert_eq!(
            (info.exchange.as_str(), info.routing_key.as_str()),
            ("ex2", "rk2")
        );
        assert_eq!(info.redelivered, Some(true));
        assert_eq!(back.properties.priority, Some(4));
        assert!(back.properties.delivery_tag.is_some_and(|t| !t.is_empty()));
        p.message.properties.delivery_tag = Some("d1".into());
        let back = TaskMessage::decode(&kombu_json(&mut p).unwrap()).unwrap();
        assert_eq!(back.properties.delivery_tag.as_deref(), Some("d1"));
    }
}
