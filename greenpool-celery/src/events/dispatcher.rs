//! Sending events: PUBLISH on `/{db}.celeryev/<type with - as .>`, in
//! the background, many per round trip under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::clock::LamportClock;
use crate::conn::Link;
use crate::control::envelope;
use crate::protocol::Timestamp;

/// The exchange events go out on.
const EXCHANGE: &str = "celeryev";

/// Most events sent in one pipeline.
const MAX_BATCH: usize = 512;

enum Op {
    Publish { topic: String, payload: String },
    Flush(oneshot::Sender<()>),
}

/// Builds and sends events for one node.
///
/// Worker events (`worker-online`, `worker-heartbeat`, `worker-offline`)
/// always go out, as Celery's do unless heartbeats and gossip are both
/// off; task events only while task events are enabled (`-E`, or
/// `enable_events` at run time).
#[derive(Debug)]
pub(crate) struct EventDispatcher {
    hostname: String,
    pid: u32,
    db: i64,
    clock: Arc<LamportClock>,
    task_events: AtomicBool,
    tx: mpsc::UnboundedSender<Op>,
}

impl EventDispatcher {
    /// A dispatcher publishing through `link` (database `db`); the sender
    /// task runs until the dispatcher is dropped.
    pub(crate) fn spawn(
        link: Arc<Link>,
        db: i64,
        hostname: String,
        clock: Arc<LamportClock>,
        task_events: bool,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, link));
        EventDispatcher {
            hostname,
            pid: std::process::id(),
            db,
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

    /// Sends a task event (`task-…`) when task events are on. `fields`
    /// is called only then, so building them costs nothing otherwise.
    pub(crate) fn task(&self, kind: &str, fields: impl FnOnce() -> Map<String, Value>) {
        if self.task_events() {
            self.send(kind, fields());
        }
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
        let payload = envelope::encode(&Value::Object(body), headers, EXCHANGE, &routing_key, 1);
        let topic = envelope::fanout_topic(self.db, EXCHANGE, &routing_key);
        let _ = self.tx.send(Op::Publish { topic, payload });
    }

    /// Waits until every event sent before this call has been published.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Op>, link: Arc<Link>) {
    let mut ops = Vec::with_capacity(64);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut flushes = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Publish { topic, payload } => {
                    pipe.cmd("PUBLISH").arg(topic).arg(payload).ignore();
                }
                Op::Flush(done) => flushes.push(done),
            }
        }
        if !pipe.is_empty() {
            // Held through a reconnection (the link's policy); events are
            // otherwise best effort, as in Celery: a monitor that misses
            // one catches up with the next heartbeat.
            let sent = link
                .call_until_done("publish events", |mut conn| {
                    let pipe = pipe.clone();
                    async move { pipe.query_async::<()>(&mut conn).await }
                })
                .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("cannot publish events: {e}"),
                Err(e) => tracing::warn!("events dropped: {e}"),
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
