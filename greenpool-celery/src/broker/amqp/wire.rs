//! A Celery message on AMQP and the same message in kombu's Redis envelope.
//!
//! On AMQP the task headers travel as application headers (a field table),
//! `correlation_id`, `reply_to`, `priority`, `content_type` and
//! `content_encoding` as basic properties, and the body as raw bytes. The
//! worker reads every message through one envelope type, so a delivery is
//! turned into the JSON envelope the Redis transport carries (body in
//! base64) and a message the worker sends on (a retry, a chain step), a
//! [`Publish`], is turned into AMQP fields, addressed by its exchange and
//! routing key.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Map, Number, Value};

use crate::broker::Publish;
use crate::error::ProtocolError;
use crate::protocol::{base64, DeliveryInfo, Envelope, Properties};

/// A field-table value as JSON (Python's view of what py-amqp decodes).
pub(crate) fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let scale = 10f64.powi(i32::from(d.scale));
            Number::from_f64(f64::from(d.value) / scale).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

/// A field table as a JSON object.
pub(crate) fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
        .collect()
}

/// A JSON value as a field-table value, typed as py-amqp types Python's.
pub(crate) fn json_to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

/// A JSON object as a field table.
pub(crate) fn json_to_table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m {
        t.insert(ShortString::from(k.as_str()), json_to_amqp(v));
    }
    t
}

/// What a delivery carries, as [`envelope_from_amqp`] needs it.
#[derive(Debug)]
pub(crate) struct Incoming<'a> {
    /// The body, taken from the delivery (not copied when it is UTF-8).
    pub(crate) body: Vec<u8>,
    pub(crate) properties: &'a BasicProperties,
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) redelivered: bool,
    /// The worker's name for this delivery (channel generation and tag).
    pub(crate) tag: &'a str,
}

/// The delivery read into an envelope's fields: the headers table as the
/// task headers, the basic properties as the properties, the body as its
/// text (base64 only when it is not UTF-8, so that its bytes reach the
/// charset the message names), and where it came from as kombu's
/// `delivery_info`. Nothing is written as JSON.
pub(crate) fn envelope_from_amqp(m: Incoming<'_>) -> Envelope {
    let p = m.properties;
    let s = |o: &Option<ShortString>| o.as_ref().map(|s| s.as_str().to_owned());
    let (body, body_encoding) = match String::from_utf8(m.body) {
        Ok(text) => (text, None),
        Err(e) => (base64::encode(e.as_bytes()), Some("base64".to_owned())),
    };
    Envelope {
        body,
        content_encoding: s(p.content_encoding()).unwrap_or_else(|| "utf-8".to_owned()),
        content_type: s(p.content_type()).unwrap_or_else(|| "application/json".to_owned()),
        headers: p.headers().as_ref().map(table_to_json).unwrap_or_default(),
        properties: Properties {
            correlation_id: s(p.correlation_id()),
            reply_to: s(p.reply_to()),
            delivery_mode: *p.delivery_mode(),
            delivery_info: DeliveryInfo {
                exchange: m.exchange.to_owned(),
                routing_key: m.routing_key.to_owned(),
                redelivered: m.redelivered.then_some(true),
            },
            priority: p.priority().map(|v| v.min(9)),
            body_encoding,
            delivery_tag: Some(m.tag.to_owned()),
        },
    }
}

/// A message ready for `basic.publish`.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

/// A [`Publish`] as an AMQP message: its exchange and routing key, the
/// headers as the field table, the properties as basic properties, the
/// body as raw bytes (decoded from base64 when the envelope carries it
/// so). The envelope's `delivery_info` and `delivery_tag` are kombu's
/// Redis bookkeeping and are not sent; the broker routes by the
/// exchange and routing key.
///
/// # Errors
///
/// [`ProtocolError`] for a body that is not valid base64.
pub(crate) fn amqp_from_publish(p: &Publish) -> Result<Outgoing, ProtocolError> {
    let v = &p.message;
    let body = match v.properties.body_encoding.as_deref() {
        Some("base64") => base64::decode(v.body.as_bytes())?,
        _ => v.body.as_bytes().to_vec(),
    };
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from(v.content_type.as_str()))
        .with_content_encoding(ShortString::from(v.content_encoding.as_str()))
        .with_headers(json_to_table(&v.headers))
        .with_delivery_mode(v.properties.delivery_mode.unwrap_or(2));
    if let Some(id) = &v.properties.correlation_id {
        props = props.with_correlation_id(ShortString::from(id.as_str()));
    }
    if let Some(r) = &v.properties.reply_to {
        props = props.with_reply_to(ShortString::from(r.as_str()));
    }
    if let Some(priority) = p.priority {
        props = props.with_priority(priority);
    }
    Ok(Outgoing {
        exchange: p.exchange.clone(),
        routing_key: p.routing_key.clone(),
        body,
        properties: props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Received;
    use crate::protocol::TaskMessage;
    use std::time::Duration;

    #[test]
    fn a_message_survives_the_trip_through_amqp_fields() {
        let mut msg = TaskMessage::new("t.add", vec![json!(1), json!("ü")], Map::new());
        msg.properties.reply_to = Some("r-1".into());
        msg.headers.timelimit.hard = Some(2.5);
        let p = Publish::to_queue("q", Some(7), msg.to_envelope().unwrap());
        let out = amqp_from_publish(&p).unwrap();
        assert_eq!((out.exchange.as_str(), out.routing_key.as_str()), ("", "q"));
        assert_eq!(out.properties.priority(), &Some(7));
        let env = envelope_from_amqp(Incoming {
            body: out.body.clone(),
            properties: &out.properties,
            exchange: "",
            routing_key: "q",
            redelivered: true,
            tag: "1:5",
        });
        // Read as the worker reads a delivery: no JSON text in between.
        let delivery = crate::broker::Delivery::of_fields("q".into(), "1:5".into(), env);
        assert_eq!(delivery.tag.as_deref(), Some("1:5"));
        let wire = delivery.parsed.unwrap();
        let back = TaskMessage::from_wire(wire, delivery.message.span_base()).unwrap();
        assert_eq!(back.headers.id, msg.headers.id);
        assert_eq!(back.headers.task, "t.add");
        assert_eq!(back.args, msg.args);
        assert_eq!(back.headers.timelimit.hard, Some(2.5));
        assert_eq!(back.properties.reply_to.as_deref(), Some("r-1"));
        assert_eq!(back.properties.delivery_tag.as_deref(), Some("1:5"));
        assert_eq!(back.properties.delivery_info.redelivered, Some(true));
    }

    #[test]
    fn a_retry_goes_back_to_the_exchange_it_came_through() {
        let msg = TaskMessage::new("t.add", vec![json!(1)], Map::new());
        let first =
            amqp_from_publish(&Publish::to_queue("q", None, msg.to_envelope().unwrap())).unwrap();
        assert_eq!(first.properties.priority(), &None);
        let env = envelope_from_amqp(Incoming {
            body: first.body.clone(),
            properties: &first.properties,
            exchange: "ex2",
            routing_key: "rk2",
            redelivered: false,
            tag: "1:1",
        });
        let again =
            crate::request::retry::retry_message(&Received::Fields(Box::new(env)), Duration::ZERO)
                .unwrap()
                .unwrap();
        let out = amqp_from_publish(&again).unwrap();
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("ex2", "rk2")
        );
        assert_eq!(out.body, first.body);
        let headers = table_to_json(out.properties.headers().as_ref().unwrap());
        assert_eq!(headers["retries"], json!(1));
        assert_eq!(headers["id"], json!(msg.headers.id));
    }

    #[test]
    fn field_values_map_to_python_types() {
        let v = json!({"a": [1, 2.5, null, true, "x"], "b": {"c": -3}});
        let back = amqp_to_json(&json_to_amqp(&v));
        assert_eq!(back, v);
        assert_eq!(amqp_to_json(&AMQPValue::Double(f64::NAN)), Value::Null);
    }

    #[test]
    fn a_body_that_is_not_utf8_keeps_its_bytes() {
        let mut msg = TaskMessage::new("t.add", vec![json!("ü")], Map::new());
        msg.headers.id = "u16".into();
        let text = serde_json::to_string(&(&msg.args, &msg.kwargs, &msg.embed)).unwrap();
        let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let headers = json_to_table(match &serde_json::to_value(&msg.headers).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        });
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-16-le".into())
            .with_headers(headers);
        let env = envelope_from_amqp(Incoming {
            body: utf16,
            properties: &props,
            exchange: "",
            routing_key: "q",
            redelivered: false,
            tag: "1:1",
        });
        assert_eq!(env.properties.body_encoding.as_deref(), Some("base64"));
        let back = TaskMessage::from_envelope(env).unwrap();
        assert_eq!(back.args, vec![json!("ü")]);
    }
}
