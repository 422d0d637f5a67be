//! One reconnecting AMQP connection: its URL, heartbeats, the channels the
//! worker uses, Celery's topology, and reconnection with backoff.
//!
//! Each connection has a generation. Delivery tags are only valid on the
//! channel that delivered them, so the worker names a delivery
//! `<generation>:<tag>`; an ack for an older generation is dropped (the
//! broker already requeued that message when the connection broke).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tokio::sync::watch;

use crate::conn::LinkSettings;
use crate::error::BrokerError;

/// Heartbeat asked of the server when the URL names none (seconds; kombu's
/// py-amqp transport uses Celery's `broker_heartbeat`, 120 s by default,
/// checked twice per interval: 60 s here is the same check rate).
const HEARTBEAT: u16 = 60;

/// How queues are declared (the worker's settings that reach the broker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Topology {
    pub(crate) queues: Vec<String>,
    pub(crate) max_priority: Option<u8>,
    pub(crate) quorum: bool,
    /// `basic.qos` prefetch count; 0 for a publisher-only session.
    pub(crate) prefetch: u16,
}

impl Topology {
    /// How `basic.qos` applies, as Celery chooses on RabbitMQ 3.3 to 3.x:
    /// to the whole channel (global), so that a new prefetch count takes
    /// effect on the running consumers at once; per consumer with quorum
    /// queues, which refuse global QoS (a new count then applies to the
    /// consumers made after it, as with Celery).
    pub(crate) fn qos_options(&self) -> BasicQosOptions {
        BasicQosOptions {
            global: !self.quorum,
        }
    }

    /// A queue's declare arguments, as kombu's `Queue` sends them.
    pub(crate) fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(p) = self.max_priority {
            args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(p));
        }
        if self.quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
        }
        args
    }
}

/// A live connection and its channels.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) conn: Connection,
    /// Consumes and acks (acks must go on the delivering channel).
    pub(crate) consume: Channel,
    /// Publishes in confirm mode.
    pub(crate) publish: Channel,
}

impl Live {
    /// Both channels and the connection are still up.
    pub(crate) fn is_up(&self) -> bool {
        self.conn.status().connected()
            && self.consume.status().connected()
            && self.publish.status().connected()
    }
}

/// The URL as lapin reads it: `pyamqp://` is `amqp://`, an empty vhost is
/// `/`, and a heartbeat is asked for when none is named.
pub(crate) fn parse_url(url: &str) -> Result<AMQPUri, BrokerError> {
    let url = match url.strip_prefix("pyamqp://") {
        Some(rest) => format!("amqp://{rest}"),
        None => url.to_owned(),
    };
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| BrokerError::Scheme(format!("{url}: {e}")))?;
    if uri.vhost.is_empty() {
        uri.vhost = "/".to_owned();
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT);
    }
    Ok(uri)
}

/// Whether `e` is the server's 406 PRECONDITION_FAILED; its text if so.
pub(crate) fn precondition(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        ErrorKind::ProtocolError(p)
            if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
        {
            Some(p.get_message().as_str().to_owned())
        }
        _ => None,
    }
}

/// A reconnecting AMQP connection shared by the consumer and the outbox.
#[derive(Debug)]
pub(crate) struct Session {
    /// What the connection is for ("broker", "remote control"), first in
    /// its log lines so an operator can tell the worker's links apart.
    name: &'static str,
    uri: AMQPUri,
    label: String,
    settings: LinkSettings,
    topology: Topology,
    live: watch::Sender<Option<Arc<Live>>>,
    dead: std::sync::Mutex<Option<String>>,
    /// Counts each connection made again after a loss (metrics).
    reconnects: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl Session {
    /// A session for `url`; nothing is connected before [`Session::connect`].
    pub(crate) fn new(
        name: &'static str,
        url: &str,
        settings: LinkSettings,
        topology: Topology,
    ) -> Result<Arc<Self>, BrokerError> {
        let uri = parse_url(url)?;
        let label = format!(
            "amqp://{}:{}/{}",
            uri.authority.host, uri.authority.port, uri.vhost
        );
        Ok(Arc::new(Session {
            name,
            uri,
            label,
            settings,
            topology,
            live: watch::channel(None).0,
            dead: std::sync::Mutex::new(None),
            reconnects: std::sync::OnceLock::new(),
        }))
    }

    /// Counts every connection made again after a loss on `counter` from
    /// now on (the first connection, even retried, is not a reconnect).
    pub(crate) fn count_reconnects(&self, counter: prometheus_client::metrics::counter::Counter) {
        let _ = self.reconnects.set(counter);
    }

    /// The parsed URL (for the broker's description in `stats`).
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// Where it connects (no credentials).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The current connection, if up.
    pub(crate) fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone().filter(|l| l.is_up())
    }

    /// Waits for a connection newer than generation `after`; `None` once
    /// the session gave up.
    pub(crate) async fn next_after(&self, after: u64) -> Option<Arc<Live>> {
        let mut rx = self.live.subscribe();
        loop {
            if self.gave_up().is_some() {
                return None;
            }
            if let Some(l) = rx.borrow_and_update().clone() {
                if l.generation > after && l.is_up() {
                    return Some(l);
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Why the session gave up, once it did.
    pub(crate) fn gave_up(&self) -> Option<String> {
        self.dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn give_up(&self, why: String) {
        *self
            .dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
        self.live.send_replace(None);
    }

    /// Connects (again), declares the topology, and publishes the new
    /// connection. Retries with the backoff as the settings allow
    /// (`first`: the first connection, which follows
    /// `broker_connection_retry_on_startup`). A 406 on a declare is never
    /// retried: the queue exists with other arguments, and only an
    /// operator can change that.
    pub(crate) async fn connect(&self, first: bool) -> Result<Arc<Live>, BrokerError> {
        let previous = self.live.borrow().as_ref().map_or(0, |l| l.generation);
        let retry = if first {
            self.settings.retry_on_startup
        } else {
            self.settings.retry
        };
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            match self.open(previous + 1).await {
                Ok(live) => {
                    if !first {
                        if let Some(c) = self.reconnects.get() {
                            c.inc();
                        }
                    }
                    if attempt > 1 || !first {
                        tracing::warn!(
                            "{}: {}: connected again after {attempt} attempt(s)",
                            self.name,
                            self.label
                        );
                    }
                    let live = Arc::new(live);
                    self.live.send_replace(Some(Arc::clone(&live)));
                    return Ok(live);
                }
                Err(e @ BrokerError::Precondition { .. }) => {
                    self.give_up(e.to_string());
                    return Err(e);
                }
                Err(e) => {
                    let out_of_tries =
                        !retry || self.settings.max_retries.is_some_and(|max| attempt >= max);
                    if out_of_tries {
                        let why = format!(
                            "{}: cannot connect to {} after {attempt} attempt(s): {e}",
                            self.name, self.label
                        );
                        self.give_up(why.clone());
                        return Err(BrokerError::GaveUp(why));
                    }
                    let pause = self.settings.backoff.delay(attempt);
                    tracing::error!(
                        "{}: {}: cannot connect: {e}; trying again in {:.2}s ({attempt})",
                        self.name,
                        self.label,
                        pause.as_secs_f64()
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn open(&self, generation: u64) -> Result<Live, BrokerError> {
        let connecting = Connection::connect_uri(self.uri.clone(), ConnectionProperties::default());
        let conn = tokio::time::timeout(self.settings.connect_timeout, connecting)
            .await
            .map_err(|_| {
                BrokerError::GaveUp(format!(
                    "connecting to {} timed out after {:?}",
                    self.label, self.settings.connect_timeout
                ))
            })?
            .map_err(BrokerError::Amqp)?;
        let consume = conn.create_channel().await.map_err(BrokerError::Amqp)?;
        let publish = conn.create_channel().await.map_err(BrokerError::Amqp)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::Amqp)?;
        self.declare(&consume).await?;
        if self.topology.prefetch > 0 {
            consume
                .basic_qos(self.topology.prefetch, self.topology.qos_options())
                .await
                .map_err(BrokerError::Amqp)?;
        }
        Ok(Live {
            generation,
            conn,
            consume,
            publish,
        })
    }

    /// Celery's topology: for each queue, a durable direct exchange of the
    /// same name, the durable queue, and the binding by the queue name.
    async fn declare(&self, ch: &Channel) -> Result<(), BrokerError> {
        for q in &self.topology.queues {
            self.declare_queue(ch, q).await?;
        }
        Ok(())
    }

    /// Declares queue `q` with its exchange and binding.
    pub(crate) async fn declare_queue(&self, ch: &Channel, q: &str) -> Result<(), BrokerError> {
        {
            let name = ShortString::from(q);
            ch.exchange_declare(
                name.clone(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_error(format!("exchange {q:?}"), e))?;
            ch.queue_declare(
                name.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.topology.queue_arguments(),
            )
            .await
            .map_err(|e| declare_error(format!("queue {q:?}"), e))?;
            ch.queue_bind(
                name.clone(),
                name.clone(),
                name,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Amqp)?;
        }
        Ok(())
    }

    /// Closes the current connection (the broker requeues what it still
    /// holds unacked for it).
    pub(crate) async fn close(&self) {
        let live = self.live.send_replace(None);
        if let Some(l) = live {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                l.conn.close(200, "worker stopping".into()),
            )
            .await;
        }
    }
}

/// A failed declaration as the worker reports it: the broker's 406 as
/// [`BrokerError::Precondition`] (never retried), anything else as is.
pub(crate) fn declare_error(what: String, e: lapin::Error) -> BrokerError {
    match precondition(&e) {
        Some(reason) => BrokerError::Precondition { what, reason },
        None => BrokerError::Amqp(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_kombu_reads_them() {
        let u = parse_url("pyamqp://guest:pw@127.0.0.1:5673//").unwrap();
        assert_eq!(u.vhost, "/");
        assert_eq!(u.authority.port, 5673);
        assert_eq!(u.query.heartbeat, Some(HEARTBEAT));
        let u = parse_url("amqp://h:1/v?heartbeat=5").unwrap();
        assert_eq!((u.vhost.as_str(), u.query.heartbeat), ("v", Some(5)));
        assert_eq!(parse_url("amqp://h:1/").unwrap().vhost, "/");
    }
}
