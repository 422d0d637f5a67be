//! [`NodeWire`]: how a node reaches its broker for remote control and
//! events, on Redis (pub/sub and lists, through the connection layer's
//! `Link`) or on AMQP (its own connection, see
//! `broker/amqp/node_link.rs`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::message::ReplyTo;
#[cfg(feature = "redis")]
use crate::conn::Link;
use crate::error::BrokerError;

/// The node's broker connection for replies, the mailbox and events.
#[derive(Debug, Clone)]
pub(crate) enum NodeWire {
    /// kombu's Redis transport: requests by PSUBSCRIBE on
    /// `/{db}.celery.pidbox`, replies LPUSHed on the bound lists, events
    /// PUBLISHed on `/{db}.celeryev/<routing key>`.
    #[cfg(feature = "redis")]
    Redis {
        /// The reconnecting link.
        link: Arc<Link>,
        /// The broker's database number (part of every topic).
        db: i64,
    },
    /// AMQP: the node's queue on `celery.pidbox`, replies and events
    /// through exchanges.
    #[cfg(feature = "amqp")]
    Amqp(Arc<crate::broker::amqp::node_link::AmqpNodeLink>),
}

impl NodeWire {
    /// Sends `answer` from `hostname` to the caller at `to`, with the
    /// request's `ticket` and the node's `clock`.
    pub(crate) async fn reply(
        &self,
        to: &ReplyTo,
        ticket: Option<&str>,
        clock: u64,
        hostname: &str,
        answer: Value,
    ) -> Result<(), BrokerError> {
        match self {
            #[cfg(feature = "redis")]
            NodeWire::Redis { link, .. } => {
                super::reply::send(link, to, ticket, clock, hostname, answer)
                    .await
                    .map(drop)
            }
            #[cfg(feature = "amqp")]
            NodeWire::Amqp(link) => {
                use crate::broker::amqp::node_link::{Outgoing, REPLY};
                use serde_json::Map;
                if to.exchange != REPLY {
                    return Err(BrokerError::GaveUp(format!(
                        "replies go to {REPLY:?} only, not to {:?}",
                        to.exchange
                    )));
                }
                let mut headers = Map::new();
                headers.insert("ticket".into(), json!(ticket));
                headers.insert("clock".into(), json!(clock));
                let mut body = Map::new();
                body.insert(hostname.to_owned(), answer);
                link.publish(&[Outgoing {
                    exchange: REPLY,
                    routing_key: to.routing_key.clone(),
                    body: Value::Object(body).to_string().into_bytes(),
                    headers,
                    delivery_mode: 1,
                }])
                .await
            }
        }
    }

    /// The transport's name as kombu's `Connection.info()` gives it
    /// (`py-amqp` and `pyamqp://` resolve to `amqp`).
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            #[cfg(feature = "redis")]
            NodeWire::Redis { .. } => "redis",
            #[cfg(feature = "amqp")]
            NodeWire::Amqp(_) => "amqp",
        }
    }

    /// kombu's `Connection.info()` of the broker (`stats.broker`).
    pub(crate) fn info(&self, connect_timeout: f64) -> Value {
        match self {
            #[cfg(feature = "redis")]
            NodeWire::Redis { link, .. } => redis_info(link, connect_timeout),
            #[cfg(feature = "amqp")]
            NodeWire::Amqp(link) => link.info(connect_timeout),
        }
    }

    /// Closes what needs closing when the node stops.
    pub(crate) async fn close(&self) {
        match self {
            #[cfg(feature = "redis")]
            NodeWire::Redis { .. } => {}
            #[cfg(feature = "amqp")]
            NodeWire::Amqp(link) => link.close().await,
        }
    }
}

/// kombu's `Connection.info()` for a Redis URL (password left out).
#[cfg(feature = "redis")]
fn redis_info(link: &Link, connect_timeout: f64) -> Value {
    let client = link.client();
    let info = client.get_connection_info();
    let (host, port, ssl) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (json!(h), json!(p), false),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (json!(host), json!(port), true),
        redis::ConnectionAddr::Unix(path) => {
            (json!(path.display().to_string()), Value::Null, false)
        }
        _ => (Value::Null, Value::Null, false),
    };
    let settings = info.redis_settings();
    json!({
        "hostname": host,
        "userid": settings.username(),
        "virtual_host": settings.db().to_string(),
        "port": port,
        "insist": false,
        "ssl": ssl,
        "transport": "redis",
        "connect_timeout": connect_timeout,
        "transport_options": {},
        "login_method": null,
        "uri_prefix": null,
        "heartbeat": null,
        "failover_strategy": "round-robin",
        "alternates": [],
    })
}
