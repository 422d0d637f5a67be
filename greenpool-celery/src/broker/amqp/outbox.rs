//! The worker's writes on AMQP, in order: results, follow-up messages
//! (retries, chain steps, links), rpc:// replies, then acks and rejects.
//!
//! # Store, then ack
//!
//! Operations queue in the order the worker makes them (a request queues
//! its result and follow-ups before its ack) and one task sends them in
//! rounds. Within a round, publishes go out first and their publisher
//! confirms are awaited together (one confirm round trip per round, not
//! per message); results on a Redis backend are flushed through the
//! backend's batcher; only then are the round's acks sent. So an ack never
//! reaches the broker before the writes queued ahead of it are confirmed.
//!
//! # Outages
//!
//! A publish that fails waits for the session's next connection and is
//! sent again (at least once, as kombu's publish retry). Acks and rejects
//! name their connection's generation; those of a connection that broke
//! are dropped, since the broker requeued those messages already.

use std::sync::{Arc, Mutex, PoisonError};

use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::results::ResultsBatcher;
use super::session::{Live, Session};
use super::wire::Outgoing;
use crate::error::BrokerError;
use crate::stats::RedisStats;

/// Most operations in one round.
const MAX_ROUND: usize = 1024;

enum Op {
    Ack(String),
    Reject(String),
    Publish(Box<Outgoing>),
    Flush(oneshot::Sender<()>),
}

/// A background task that sends queued operations in rounds.
#[derive(Debug)]
pub(crate) struct AmqpOutbox {
    tx: mpsc::UnboundedSender<Op>,
    task: Mutex<Option<JoinHandle<()>>>,
    session: Arc<Session>,
}

/// A delivery name `<generation>:<tag>` split.
pub(crate) fn split_tag(name: &str) -> Option<(u64, u64)> {
    let (g, t) = name.split_once(':')?;
    Some((g.parse().ok()?, t.parse().ok()?))
}

impl AmqpOutbox {
    /// Starts the sender on `session`; results for a Redis backend go
    /// through `results` (flushed before each round's acks).
    pub(crate) fn spawn(
        session: Arc<Session>,
        results: Option<Arc<ResultsBatcher>>,
        stats: Arc<RedisStats>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, Arc::clone(&session), results, stats));
        AmqpOutbox {
            tx,
            session,
            task: Mutex::new(Some(task)),
        }
    }

    /// Set once the session gave up.
    pub(crate) fn failure(&self) -> Option<BrokerError> {
        self.session.gave_up().map(BrokerError::GaveUp)
    }

    /// Queues the ack of delivery `name`.
    pub(crate) fn ack(&self, name: String) {
        let _ = self.tx.send(Op::Ack(name));
    }

    /// Queues `basic.reject` with requeue of delivery `name`.
    pub(crate) fn reject(&self, name: String) {
        let _ = self.tx.send(Op::Reject(name));
    }

    /// Queues a publish (confirmed before later acks go out).
    pub(crate) fn publish(&self, m: Outgoing) {
        let _ = self.tx.send(Op::Publish(Box::new(m)));
    }

    /// Waits until everything queued before this call was sent (or
    /// dropped, once the session gave up).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Flushes and stops the sender.
    pub(crate) async fn close(&self) {
        self.flush().await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Op>,
    session: Arc<Session>,
    results: Option<Arc<ResultsBatcher>>,
    stats: Arc<RedisStats>,
) {
    let mut round = Vec::with_capacity(MAX_ROUND);
    while rx.recv_many(&mut round, MAX_ROUND).await > 0 {
        send_round(&session, results.as_deref(), &stats, &mut round).await;
    }
}

async fn send_round(
    session: &Session,
    results: Option<&ResultsBatcher>,
    stats: &RedisStats,
    round: &mut Vec<Op>,
) {
    let mut publishes = Vec::new();
    let mut settles = Vec::new();
    let mut flushes = Vec::new();
    for op in round.drain(..) {
        match op {
            Op::Publish(m) => publishes.push(*m),
            Op::Ack(t) => settles.push((t, true)),
            Op::Reject(t) => settles.push((t, false)),
            Op::Flush(tx) => flushes.push(tx),
        }
    }
    if !publishes.is_empty() {
        publish_all(session, stats, publishes).await;
    }
    if !settles.is_empty() {
        if let Some(b) = results {
            b.flush().await;
        }
        if let Some(live) = session.current() {
            settle(&live, stats, settles).await;
        }
    }
    for f in flushes {
        let _ = f.send(());
    }
}

/// Publishes every message and awaits their confirms together; on a
/// failure waits for the next connection and sends what is unconfirmed
/// again. Gives up (dropping them, logged) only when the session did.
async fn publish_all(session: &Session, stats: &RedisStats, mut pending: Vec<Outgoing>) {
    let mut generation = 0;
    loop {
        let live = match session.current() {
            Some(l) if l.generation > generation || generation == 0 => l,
            _ => match session.next_after(generation).await {
                Some(l) => l,
                None => {
                    tracing::error!(
                        "dropping {} message(s) to publish: the broker connection gave up",
                        pending.len()
                    );
                    return;
                }
            },
        };
        generation = live.generation;
        match publish_on(&live, &pending).await {
            Ok(()) => {
                stats.add_confirmed(pending.len() as u64);
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "publishing {} message(s) failed ({e}); sending them again once reconnected",
                    pending.len()
                );
                pending.shrink_to_fit();
            }
        }
    }
}

async fn publish_on(live: &Live, msgs: &[Outgoing]) -> Result<(), BrokerError> {
    let mut confirms = Vec::with_capacity(msgs.len());
    for m in msgs {
        let c = live
            .publish
            .basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                m.properties.clone(),
            )
            .await
            .map_err(BrokerError::Amqp)?;
        confirms.push(c);
    }
    for c in confirms {
        let confirmation = c.await.map_err(BrokerError::Amqp)?;
        if confirmation.is_nack() {
            return Err(BrokerError::GaveUp(
                "the broker refused (nacked) a published message".to_owned(),
            ));
        }
    }
    Ok(())
}

async fn settle(live: &Live, stats: &RedisStats, settles: Vec<(String, bool)>) {
    for (name, ack) in settles {
        let Some((generation, tag)) = split_tag(&name) else {
            tracing::error!("cannot settle delivery {name:?}: not a delivery of this worker");
            continue;
        };
        if generation != live.generation {
            tracing::debug!("delivery {name} belongs to a lost connection; the broker requeued it");
            continue;
        }
        let r = if ack {
            live.consume
                .basic_ack(tag, BasicAckOptions::default())
                .await
        } else {
            live.consume
                .basic_reject(tag, BasicRejectOptions { requeue: true })
                .await
        };
        match r {
            Ok(()) if ack => stats.add_acked(1),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("cannot settle delivery {name}: {e}; the broker requeues it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_names_split_or_are_refused() {
        assert_eq!(split_tag("3:17"), Some((3, 17)));
        assert_eq!(split_tag("uuid-like"), None);
        assert_eq!(split_tag("x:1"), None);
    }
}
