//! Sending events on the `celeryev` exchange with the routing key
//! `<type with - as .>` (on Redis: PUBLISH on `/{db}.celeryev/<key>`), in
//! the background, many per round trip under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::clock::LamportClock;
#[cfg(feature = "redis")]
use crate::control::envelope;
use crate::control::NodeWire;
use crate::protocol::Timestamp;

/// The exchange events go out on.
const EXCHANGE: &str = "celeryev";

/// Most events sent in one pipeline.
const MAX_BATCH: usize = 512;

enum Op {
    Publish {
        routing_key: String,
        body: Value,
        headers: Map<String, Value>,
    },
    Flush(oneshot::Sender<()>),
}

/// Builds and sends events for one node.
///
/// Worker events (`worker-online`, `worker-heartbeat`, `worker-offline`)
/// always go out, as Celery's do unless heartbeats and gossip are both
/// off; task events only while task events are enabled (`-E`, or
/// `enable_events` at run time), and only from the node's recorder
/// (`control/recorder.rs`), which counts them as it sends them.
#[derive(Debug)]
pub(crate) struct EventDispatcher {
    hostname: String,
    pid: u32,
    clock: Arc<LamportClock>,
    task_events: AtomicBool,
    tx: mpsc::UnboundedSender<Op>,
}

impl EventDispatcher {
    /// A dispatcher publishing through `wire`; the sender task runs until
    /// the dispatcher is dropped.
    pub(crate) fn spawn(
        wire: NodeWire,
        hostname: String,
        clock: Arc<LamportClock>,
        task_events: bool,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, wire));
        EventDispatcher {
            hostname,
            pid: std::process::id(),
            clock,
            task_events: AtomicBool::new(task_events),
            tx,
        }
    }

    /// Whether task events are on.
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns the previous setting.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// Sends an event of type `kind` with `fields` plus the fields every
    /// event carries: `hostname`, `utcoffset`, `pid`, `clock`,
    /// `timestamp` and `type`.
    pub(crate) fn send(&self, kind: &str, fields: Map<String, Value>) {
        let mut body = Map::with_capacity(fields.len() + 6);
        body.insert("hostname".into(), json!(self.hostname));
        // Timestamps are UTC; Celery's utcoffset is the local zone's offset
        // in hours, which monitors add back when they show local times.
        body.insert("utcoffset".into(), json!(0.0));
        body.insert("pid".into(), json!(self.pid));
        body.insert("clock".into(), json!(self.clock.forward()));
        body.extend(fields);
        body.insert("timestamp".into(), json!(Timestamp::now().unix_seconds()));
        body.insert("type".into(), json!(kind));
        let routing_key = kind.replace('-', ".");
        let mut headers = Map::new();
        headers.insert("hostname".into(), json!(self.hostname));
        let _ = self.tx.send(Op::Publish {
            routing_key,
            body: Value::Object(body),
            headers,
        });
    }

    /// Waits until every event sent before this call has been published.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The events a test dispatcher sent, kept instead of published.
#[cfg(test)]
pub(crate) struct Captured(mpsc::UnboundedReceiver<Op>);

#[cfg(test)]
impl EventDispatcher {
    /// A dispatcher for node `hostname` that publishes nothing: what it
    /// sends is kept in the [`Captured`] returned with it.
    pub(crate) fn captured(hostname: &str, task_events: bool) -> (Self, Captured) {
        let (tx, rx) = mpsc::unbounded_channel();
        let d = EventDispatcher {
            hostname: hostname.to_owned(),
            pid: std::process::id(),
            clock: Arc::new(LamportClock::default()),
            task_events: AtomicBool::new(task_events),
            tx,
        };
        (d, Captured(rx))
    }
}

#[cfg(test)]
impl Captured {
    /// The bodies of the events sent since the last call, in order.
    pub(crate) fn take(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(op) = self.0.try_recv() {
            if let Op::Publish { body, .. } = op {
                out.push(body);
            }
        }
        out
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Op>, wire: NodeWire) {
    let mut ops = Vec::with_capacity(64);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut events = Vec::with_capacity(ops.len());
        let mut flushes = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Publish {
                    routing_key,
                    body,
                    headers,
                } => events.push((routing_key, body, headers)),
                Op::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            // Held through a reconnection (the connection's policy); events
            // are otherwise best effort, as in Celery: a monitor that misses
            // one catches up with the next heartbeat.
            if let Err(e) = publish(&wire, events).await {
                tracing::warn!("events dropped: {e}");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Publishes a batch of events `(routing key, body, headers)`.
async fn publish(
    wire: &NodeWire,
    events: Vec<(String, Value, Map<String, Value>)>,
) -> Result<(), crate::error::BrokerError> {
    match wire {
        #[cfg(feature = "redis")]
        NodeWire::Redis { link, db } => {
            let mut pipe = redis::pipe();
            for (routing_key, body, headers) in events {
                let payload = envelope::encode(&body, headers, EXCHANGE, &routing_key, 1);
                let topic = link
                    .settings()
                    .keys
                    .fanout_topic(*db, EXCHANGE, &routing_key);
                pipe.cmd("PUBLISH").arg(topic).arg(payload).ignore();
            }
            link.call_until_done("publish events", |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?
            .map_err(crate::error::BrokerError::Redis)
        }
        #[cfg(feature = "amqp")]
        NodeWire::Amqp(link) => {
            use crate::broker::amqp::node_link::{Outgoing, EVENTS};
            debug_assert_eq!(EVENTS, EXCHANGE);
            let messages: Vec<Outgoing> = events
                .into_iter()
                .map(|(routing_key, body, headers)| Outgoing {
                    exchange: EVENTS,
                    routing_key,
                    body: body.to_string().into_bytes(),
                    headers,
                    delivery_mode: 1,
                })
                .collect();
            link.publish(&messages).await
        }
    }
}
