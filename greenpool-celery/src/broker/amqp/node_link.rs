//! The worker node's own AMQP connection, for Celery's remote control and
//! events as kombu lays them out on AMQP:
//!
//! * requests arrive on the node's queue `<hostname>.celery.pidbox`
//!   (exclusive, auto-delete, `x-message-ttl` 300 s and `x-expires` 10 s:
//!   Celery's `control_queue_ttl` and `control_queue_expires`), bound to
//!   the fanout exchange `celery.pidbox`, consumed without acks;
//! * replies go to the direct exchange `reply.celery.pidbox` under the
//!   caller's routing key, with the `ticket` and `clock` headers;
//! * events go to the durable topic exchange `celeryev`, routing key the
//!   event type with `-` as `.`, header `hostname`.
//!
//! Bodies are plain JSON (`application/json`, `utf-8`), as kombu's json
//! serializer writes them on AMQP. The connection is its own [`Session`],
//! so a flood of events never delays the consumer's acks, and it reconnects
//! (and declares its exchanges again) on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};
use serde_json::{Map, Value};

use super::session::{Live, Session, Topology};
use super::wire::amqp_to_json;
use crate::conn::LinkSettings;
use crate::error::BrokerError;

/// kombu's broadcast exchange of Celery's mailbox.
pub(crate) const PIDBOX: &str = "celery.pidbox";
/// The exchange replies are published to.
pub(crate) const REPLY: &str = "reply.celery.pidbox";
/// The exchange events are published to.
pub(crate) const EVENTS: &str = "celeryev";
/// Celery's `control_queue_ttl` (300 s), in milliseconds.
pub(crate) const QUEUE_TTL_MS: i32 = 300_000;
/// Celery's `control_queue_expires` (10 s), in milliseconds.
pub(crate) const QUEUE_EXPIRES_MS: i32 = 10_000;

/// One message to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) exchange: &'static str,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Map<String, Value>,
    /// 1: transient, 2: persistent.
    pub(crate) delivery_mode: u8,
}

/// The node's reconnecting connection.
#[derive(Debug)]
pub(crate) struct AmqpNodeLink {
    session: Arc<Session>,
    /// Held while (re)connecting, so one caller reconnects at a time.
    reconnect: tokio::sync::Mutex<()>,
    /// The generation of the connection whose exchanges are declared.
    declared: AtomicU64,
}

/// The arguments of a mailbox queue, as kombu's `Queue(expires=…,
/// message_ttl=…)` declares them (py-amqp writes small ints as signed
/// 32-bit values).
pub(crate) fn mailbox_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(QUEUE_TTL_MS));
    args.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
    args
}

/// Declares Celery's control and event exchanges as Celery declares them
/// (a mismatch would be the broker's 406).
pub(crate) async fn declare_exchanges(live: &Live) -> Result<(), BrokerError> {
    // A channel of its own: a refused declare closes only this channel.
    let ch = live
        .conn
        .create_channel()
        .await
        .map_err(BrokerError::Amqp)?;
    let plain = ExchangeDeclareOptions::default();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind, opts) in [
        (PIDBOX, ExchangeKind::Fanout, plain),
        (REPLY, ExchangeKind::Direct, plain),
        (EVENTS, ExchangeKind::Topic, durable),
    ] {
        ch.exchange_declare(name.into(), kind, opts, FieldTable::default())
            .await
            .map_err(|e| super::session::declare_error(format!("exchange {name:?}"), e))?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Properties of a published JSON message.
pub(crate) fn json_properties(headers: &Map<String, Value>, delivery_mode: u8) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(delivery_mode)
        .with_headers(super::wire::json_to_table(headers))
}

/// Header `name` of a delivery, as JSON (`Null` when missing).
pub(crate) fn header(d: &Delivery, name: &str) -> Value {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .map_or(Value::Null, amqp_to_json)
}

/// The `clock` header of a delivery (0 when missing).
pub(crate) fn clock_header(d: &Delivery) -> u64 {
    header(d, "clock").as_u64().unwrap_or(0)
}

/// Whether `e` means the broker refused a declaration for good (406).
pub(crate) fn is_refusal(e: &BrokerError) -> bool {
    matches!(e, BrokerError::Precondition { .. })
}

impl AmqpNodeLink {
    /// Connects to `url` (with the startup retry policy of `settings`).
    pub(crate) async fn open(url: &str, settings: LinkSettings) -> Result<Arc<Self>, BrokerError> {
        let session = Session::new("remote control", url, settings, Topology::default())?;
        let link = Arc::new(AmqpNodeLink {
            session,
            reconnect: tokio::sync::Mutex::new(()),
            declared: AtomicU64::new(0),
        });
        link.live().await?;
        Ok(link)
    }

    /// Counts the connection's reconnects on `counter` (metrics).
    pub(crate) fn count_reconnects(&self, counter: prometheus_client::metrics::counter::Counter) {
        self.session.count_reconnects(counter);
    }

    /// The connection, with Celery's exchanges declared on it; connects
    /// again (with the settings' backoff) when it broke.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, BrokerError> {
        let _one = self.reconnect.lock().await;
        let live = match self.session.current() {
            Some(l) => l,
            None => {
                let first = self.declared.load(Ordering::Relaxed) == 0;
                self.session.connect(first).await?
            }
        };
        if self.declared.load(Ordering::Relaxed) != live.generation {
            declare_exchanges(&live).await?;
            self.declared.store(live.generation, Ordering::Relaxed);
        }
        Ok(live)
    }

    /// Declares and binds the mailbox queue `queue` and consumes it (no
    /// acks, as kombu's pidbox consumer), on a channel of its own.
    pub(crate) async fn listen(&self, queue: &str) -> Result<Consumer, BrokerError> {
        let live = self.live().await?;
        let ch = live
            .conn
            .create_channel()
            .await
            .map_err(BrokerError::Amqp)?;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            mailbox_queue_arguments(),
        )
        .await
        .map_err(|e| super::session::declare_error(format!("queue {queue:?}"), e))?;
        ch.queue_bind(
            queue.into(),
            PIDBOX.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Amqp)?;
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Amqp)
    }

    /// A caller's reply queue `<oid>.reply.celery.pidbox`, bound under
    /// `oid` and consumed without acks, on a channel of its own (close it
    /// when done: the queue goes with it), as kombu's `Mailbox` declares
    /// it.
    pub(crate) async fn reply_queue(&self, oid: &str) -> Result<(Channel, Consumer), BrokerError> {
        let live = self.live().await?;
        let ch = live
            .conn
            .create_channel()
            .await
            .map_err(BrokerError::Amqp)?;
        let queue = format!("{oid}.{REPLY}");
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            mailbox_queue_arguments(),
        )
        .await
        .map_err(|e| super::session::declare_error(format!("queue {queue:?}"), e))?;
        ch.queue_bind(
            queue.as_str().into(),
            REPLY.into(),
            oid.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Amqp)?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Amqp)?;
        Ok((ch, consumer))
    }

    /// Publishes `messages` and waits for the broker's confirms. A broken
    /// connection is reopened and the batch sent again, up to three times
    /// (replies and events are best effort in Celery too).
    pub(crate) async fn publish(&self, messages: &[Outgoing]) -> Result<(), BrokerError> {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            match self.publish_once(messages).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 3 || is_refusal(&e) => return Err(e),
                Err(e) => tracing::warn!("control: publishing again after: {e}"),
            }
        }
    }

    async fn publish_once(&self, messages: &[Outgoing]) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let c = live
                .publish
                .basic_publish(
                    m.exchange.into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &m.body,
                    json_properties(&m.headers, m.delivery_mode),
                )
                .await
                .map_err(BrokerError::Amqp)?;
            confirms.push(c);
        }
        for c in confirms {
            let confirm = c.await.map_err(BrokerError::Amqp)?;
            if confirm.is_nack() {
                return Err(BrokerError::GaveUp(
                    "the broker refused (nacked) a control message".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// kombu's `Connection.info()` for this connection (no password).
    pub(crate) fn info(&self, connect_timeout: f64) -> Value {
        let uri = self.session.uri();
        let mut m = Map::new();
        m.insert("hostname".into(), Value::from(uri.authority.host.clone()));
        m.insert(
            "userid".into(),
            Value::from(uri.authority.userinfo.username.clone()),
        );
        m.insert("virtual_host".into(), Value::from(uri.vhost.clone()));
        m.insert("port".into(), Value::from(uri.authority.port));
        m.insert("insist".into(), Value::Bool(false));
        m.insert(
            "ssl".into(),
            Value::Bool(matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS)),
        );
        m.insert("transport".into(), Value::from("amqp"));
        m.insert("connect_timeout".into(), Value::from(connect_timeout));
        m.insert("transport_options".into(), Value::Object(Map::new()));
        m.insert("login_method".into(), Value::from("PLAIN"));
        m.insert("uri_prefix".into(), Value::Null);
        m.insert(
            "heartbeat".into(),
            uri.query.heartbeat.map_or(Value::Null, Value::from),
        );
        m.insert("failover_strategy".into(), Value::from("round-robin"));
        m.insert("alternates".into(), Value::Array(Vec::new()));
        Value::Object(m)
    }

    /// Closes the connection (the broker drops the mailbox queue).
    pub(crate) async fn close(&self) {
        self.session.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_queues_carry_celerys_ttl_and_expiry() {
        let args = mailbox_queue_arguments();
        let m = super::super::wire::table_to_json(&args);
        assert_eq!(m["x-message-ttl"], 300_000);
        assert_eq!(m["x-expires"], 10_000);
    }

    #[test]
    fn json_messages_say_what_they_are() {
        let mut h = Map::new();
        h.insert("hostname".into(), Value::from("w@h"));
        let p = json_properties(&h, 1);
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(1));
        let back = super::super::wire::table_to_json(p.headers().as_ref().unwrap());
        assert_eq!(back["hostname"], "w@h");
    }
}
