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
//!
//! # Follow-ups the broker cannot route
//!
//! Follow-ups are published `mandatory`: one that no queue is bound to
//! receive comes back with its confirm (`basic.return`) instead of being
//! dropped. It is logged as an error with its exchange and routing key,
//! and the ack of the delivery it came from (a late-ack request's, named
//! with the publish) is not sent: that message stays unacked, and the
//! broker delivers it again once this connection ends. An early-ack
//! request's message was acked when the task started; its unroutable
//! follow-up is logged as lost. rpc:// replies are not mandatory (a
//! client that left takes its reply queue with it, as with Celery).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::results::{Forwarded, ResultsBatcher};
use super::session::{Live, Session};
use super::wire::Outgoing;
use crate::error::BrokerError;
use crate::stats::BrokerStats;

/// Most operations in one round.
const MAX_ROUND: usize = 1024;

enum Op {
    Ack(String),
    Reject(String),
    Publish(Box<Publish>),
    Flush(oneshot::Sender<()>),
}

/// A message to publish and what it is for.
struct Publish {
    message: Outgoing,
    /// A follow-up (a retry, a chain step, a link): published mandatory.
    follow_up: bool,
    /// The still unacked delivery the follow-up came from, whose ack is
    /// withheld if the broker cannot route it.
    origin: Option<String>,
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
    /// through `results` (flushed before each round's acks), whose
    /// concluded chords come back through its `Forwarded`.
    pub(crate) fn spawn(
        session: Arc<Session>,
        results: Option<(Arc<ResultsBatcher>, Forwarded)>,
        stats: Arc<BrokerStats>,
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
        self.send(Publish {
            message: m,
            follow_up: false,
            origin: None,
        });
    }

    /// Queues a follow-up: published mandatory and confirmed before later
    /// acks go out; when the broker cannot route it, the ack of `origin`
    /// (the delivery it came from, if still unacked) is not sent.
    pub(crate) fn follow_up(&self, m: Outgoing, origin: Option<String>) {
        self.send(Publish {
            message: m,
            follow_up: true,
            origin,
        });
    }

    fn send(&self, p: Publish) {
        let _ = self.tx.send(Op::Publish(Box::new(p)));
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
    mut results: Option<(Arc<ResultsBatcher>, Forwarded)>,
    stats: Arc<BrokerStats>,
) {
    let mut round = Vec::with_capacity(MAX_ROUND);
    // Deliveries whose follow-up came back unroutable; a request's ack may
    // come in a later round than its follow-up.
    let mut withheld = HashSet::new();
    let mut chords = Vec::new();
    loop {
        // A chord concluded while nothing else is queued (its last part
        // acked early) starts a round of its own.
        tokio::select! {
            n = rx.recv_many(&mut round, MAX_ROUND) => {
                if n == 0 {
                    break;
                }
            }
            Some(c) = concluded(&mut results) => chords.push(c),
        }
        send_round(
            &session,
            results.as_mut().map(|(b, f)| (&**b, f)),
            &stats,
            (&mut round, &mut chords),
            &mut withheld,
        )
        .await;
    }
}

/// The next concluded chord of the results backend; pending for ever
/// without one.
async fn concluded(
    results: &mut Option<(Arc<ResultsBatcher>, Forwarded)>,
) -> Option<super::results::Concluded> {
    match results {
        Some((_, forwarded)) => forwarded.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends one round: the results (on a Redis backend, whose chord joins
/// hand back the messages of the chords they concluded), then every
/// publish, confirmed, then the acks and rejects.
async fn send_round(
    session: &Session,
    results: Option<(&ResultsBatcher, &mut Forwarded)>,
    stats: &BrokerStats,
    (round, chords): (&mut Vec<Op>, &mut Vec<super::results::Concluded>),
    withheld: &mut HashSet<String>,
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
    let mut chord_keys = Vec::new();
    if let Some((b, forwarded)) = results {
        if !settles.is_empty() {
            b.flush().await;
        }
        while let Ok(c) = forwarded.try_recv() {
            chords.push(c);
        }
        for c in chords.drain(..) {
            let (messages, origin, group) = super::results::parts(c);
            publishes.extend(chord_messages(messages, origin));
            chord_keys.push(group);
        }
        if !publishes.is_empty() {
            withheld.extend(publish_all(session, stats, publishes).await);
            publishes = Vec::new();
        }
        if !chord_keys.is_empty() {
            b.delete(std::mem::take(&mut chord_keys));
        }
    }
    if !publishes.is_empty() {
        withheld.extend(publish_all(session, stats, publishes).await);
    }
    let settles = withhold_acks(settles, withheld);
    if !settles.is_empty() {
        if let Some(live) = session.current() {
            settle(&live, stats, settles).await;
        }
    }
    for f in flushes {
        let _ = f.send(());
    }
}

/// A concluded chord's messages as follow-ups of `origin` (its last
/// part's delivery, whose ack waits for their confirms).
fn chord_messages(
    messages: Vec<crate::broker::Publish>,
    origin: Option<String>,
) -> impl Iterator<Item = Publish> {
    messages
        .into_iter()
        .filter_map(|p| match super::wire::amqp_from_publish(&p) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!("cannot send a chord's message: {e}");
                None
            }
        })
        .map(move |message| Publish {
            message,
            follow_up: true,
            origin: origin.clone(),
        })
}

/// Drops from `settles` the acks of deliveries in `withheld` (whose
/// follow-up the broker could not route), forgetting them: each is
/// settled once. A reject of one goes out (it requeues the message).
fn withhold_acks(
    settles: Vec<(String, bool)>,
    withheld: &mut HashSet<String>,
) -> Vec<(String, bool)> {
    if withheld.is_empty() {
        return settles;
    }
    settles
        .into_iter()
        .filter(|(name, ack)| {
            let held = withheld.remove(name);
            if held && *ack {
                tracing::warn!(
                    "delivery {name} is left unacked: its follow-up was not routed; \
                     the broker delivers it again when this connection ends"
                );
            }
            !(held && *ack)
        })
        .collect()
}

/// Publishes every message and awaits their confirms together; on a
/// failure waits for the next connection and sends what is unconfirmed
/// again. Gives up (dropping them, logged) only when the session did.
/// Returns the origins of the follow-ups the broker could not route.
async fn publish_all(
    session: &Session,
    stats: &BrokerStats,
    mut pending: Vec<Publish>,
) -> Vec<String> {
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
                    return Vec::new();
                }
            },
        };
        generation = live.generation;
        match publish_on(&live, &pending).await {
            Ok(returned) => {
                stats.add_confirmed(pending.len() as u64);
                return unrouted_origins(pending, &returned);
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

/// Publishes `msgs` and awaits their confirms; returns the messages the
/// broker returned as unroutable.
async fn publish_on(live: &Live, msgs: &[Publish]) -> Result<Vec<Delivery>, BrokerError> {
    let mut confirms = Vec::with_capacity(msgs.len());
    for p in msgs {
        let m = &p.message;
        let c = live
            .publish
            .basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: p.follow_up,
                    ..BasicPublishOptions::default()
                },
                &m.body,
                m.properties.clone(),
            )
            .await
            .map_err(BrokerError::Amqp)?;
        confirms.push(c);
    }
    let mut returned = Vec::new();
    for c in confirms {
        let confirmation = c.await.map_err(BrokerError::Amqp)?;
        if confirmation.is_nack() {
            return Err(BrokerError::GaveUp(
                "the broker refused (nacked) a published message".to_owned(),
            ));
        }
        if let Some(r) = confirmation.take_message() {
            tracing::error!(
                "the broker could not route a follow-up to exchange {:?} with routing key \
                 {:?} ({} {})",
                r.delivery.exchange.as_str(),
                r.delivery.routing_key.as_str(),
                r.reply_code,
                r.reply_text.as_str()
            );
            returned.push(r.delivery);
        }
    }
    Ok(returned)
}

/// The origins of the follow-ups in `sent` that the broker returned.
///
/// lapin hands a returned message to whichever confirm completes next
/// (under a multiple ack, in no set order), so each one is matched to
/// what was sent by its exchange, routing key and body instead of by the
/// confirm that carried it. A returned follow-up of an early-ack request
/// has no origin: its message was acked when the task started.
fn unrouted_origins(sent: Vec<Publish>, returned: &[Delivery]) -> Vec<String> {
    let mut sent: Vec<Option<Publish>> = sent.into_iter().map(Some).collect();
    let mut origins = Vec::new();
    for r in returned {
        let found = sent.iter_mut().find(|p| {
            p.as_ref().is_some_and(|p| {
                let m = &p.message;
                p.follow_up
                    && m.exchange == r.exchange.as_str()
                    && m.routing_key == r.routing_key.as_str()
                    && m.body == r.data
            })
        });
        match found.and_then(Option::take) {
            Some(Publish {
                origin: Some(o), ..
            }) => origins.push(o),
            Some(Publish { origin: None, .. }) => tracing::error!(
                "a follow-up to exchange {:?} with routing key {:?} is lost: the message \
                 it came from was acked when its task started",
                r.exchange.as_str(),
                r.routing_key.as_str()
            ),
            None => {}
        }
    }
    origins
}

async fn settle(live: &Live, stats: &BrokerStats, settles: Vec<(String, bool)>) {
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

    fn publish(exchange: &str, body: &[u8], follow_up: bool, origin: Option<&str>) -> Publish {
        Publish {
            message: Outgoing {
                exchange: exchange.to_owned(),
                routing_key: "rk".to_owned(),
                body: body.to_vec(),
                properties: lapin::BasicProperties::default(),
            },
            follow_up,
            origin: origin.map(str::to_owned),
        }
    }

    fn returned(exchange: &str, body: &[u8]) -> Delivery {
        Delivery::mock(0, exchange.into(), "rk".into(), false, body.to_vec())
    }

    #[test]
    fn a_returned_follow_up_names_its_origin_whatever_confirm_carried_it() {
        let sent = vec![
            publish("ex", b"reply", false, None),
            publish("ex", b"retry-a", true, Some("1:4")),
            publish("ex", b"retry-b", true, Some("1:5")),
            publish("ex", b"retry-b", true, Some("1:6")),
            publish("ex", b"link", true, None),
        ];
        // Returned in another order than sent; the same message twice is
        // matched to two sends.
        let back = [
            returned("ex", b"retry-b"),
            returned("ex", b"link"),
            returned("ex", b"retry-b"),
        ];
        assert_eq!(unrouted_origins(sent, &back), ["1:5", "1:6"]);
        let sent = vec![publish("ex", b"retry-a", true, Some("1:4"))];
        assert!(unrouted_origins(sent, &[returned("other", b"retry-a")]).is_empty());
    }

    #[test]
    fn the_ack_of_an_unrouted_origin_is_withheld_once() {
        let mut withheld: HashSet<String> = ["1:4".to_owned(), "1:5".to_owned()].into();
        let settles = vec![
            ("1:3".to_owned(), true),
            ("1:4".to_owned(), true),
            ("1:5".to_owned(), false),
        ];
        let out = withhold_acks(settles, &mut withheld);
        assert_eq!(out, [("1:3".to_owned(), true), ("1:5".to_owned(), false)]);
        assert!(withheld.is_empty(), "each is settled once, then forgotten");
        let out = withhold_acks(vec![("1:4".to_owned(), true)], &mut withheld);
        assert_eq!(out, [("1:4".to_owned(), true)]);
    }
}
