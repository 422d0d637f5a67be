//! What a batch writes and where: the [`Targets`], follow-up messages
//! and the list pushes they are routed to, and the COMMIT call that
//! writes results, pushes and acks in one step (see
//! [`super::batch`] for the order and [`super::scripts::COMMIT`] for the
//! script).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::scripts::Scripts;
use crate::broker::Publish;
use crate::canvas::chord::{JoinKeys, DONE_SECONDS};
use crate::conn::Link;
use crate::error::BrokerError;
use crate::stats::BrokerStats;

/// A follow-up message waiting to be routed and pushed.
pub(super) struct FollowUp {
    /// The exchange it is sent to (`""`: the default exchange).
    exchange: String,
    /// Its routing key.
    routing_key: String,
    /// Its priority step's source (0 when it has none).
    priority: u8,
    /// The message as kombu's JSON envelope.
    payload: String,
    /// The still unacked delivery it came from, whose ack is withheld if
    /// no queue receives it.
    pub(super) origin: Option<String>,
    /// Its once-key: pushed only by the first write that sets it.
    pub(super) once: Option<String>,
}

impl FollowUp {
    /// `publish` as a follow-up; `None` (logged) when it cannot be
    /// encoded.
    pub(super) fn of(mut publish: Publish, origin: Option<String>) -> Option<Self> {
        match crate::broker::publish::kombu_json(&mut publish) {
            Ok(payload) => Some(FollowUp {
                exchange: publish.exchange,
                routing_key: publish.routing_key,
                priority: publish.priority.unwrap_or(0),
                payload,
                origin,
                once: None,
            }),
            Err(e) => {
                tracing::error!(
                    "cannot send a follow-up to exchange {:?} with routing key {:?}: {e}",
                    publish.exchange,
                    publish.routing_key
                );
                None
            }
        }
    }
}

/// A list push of a COMMIT: the queue key, the payload, the once-key.
pub(super) struct Push {
    list: String,
    payload: String,
    once: Option<String>,
}

/// Where a batcher writes.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    /// Follow-ups and acks (and results when `backend` is `None`).
    pub(crate) broker: Arc<Link>,
    /// The result backend when it is another server or database.
    pub(crate) backend: Option<Arc<Link>>,
    pub(crate) scripts: Scripts,
    /// Result expiry in seconds (0: never).
    pub(crate) result_expires: u64,
    /// Where a concluded chord's messages go when the broker is not this
    /// Redis (a Redis result backend beside an AMQP broker): handed to the
    /// broker's writer with the chord's keys, which it deletes through
    /// [`Batcher::delete`] once the messages are confirmed. `None`: pushed
    /// here, in the batch's COMMIT.
    pub(crate) forward: Option<mpsc::UnboundedSender<Concluded>>,
}

/// The COMMIT call of `t` for results `stores` (keys, payloads),
/// `pushes` and `acks`, under `once` (`""`: no pushes, no once-key
/// needed).
pub(super) fn commit(
    t: &Targets,
    once: &str,
    stores: (&[String], &[String]),
    pushes: &[Push],
    done: &[String],
    acks: &[String],
) -> redis::Cmd {
    let keys = &t.broker.settings().keys;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&t.scripts.commit)
        .arg(3 + stores.0.len() + 2 * pushes.len() + 5 * done.len())
        .arg(keys.unacked())
        .arg(keys.unacked_index())
        .arg(once)
        .arg(stores.0);
    for p in pushes {
        cmd.arg(&p.list).arg(p.once.as_deref().unwrap_or(""));
    }
    for group in done {
        let k = JoinKeys::of(group);
        cmd.arg(&k.joined)
            .arg(&k.added)
            .arg(&k.size)
            .arg(&k.parts)
            .arg(&k.claim);
    }
    cmd.arg(t.result_expires)
        .arg(stores.0.len())
        .arg(pushes.len())
        .arg(done.len())
        .arg(DONE_SECONDS)
        .arg(stores.1);
    for p in pushes {
        cmd.arg(&p.payload);
    }
    cmd.arg(acks);
    cmd
}

/// Stores results (`keys`, `payloads`) on `backend`, retrying through
/// outages.
pub(super) async fn store_on(
    backend: &Link,
    t: &Targets,
    stats: &BrokerStats,
    keys: &[String],
    payloads: &[String],
) -> Result<(), BrokerError> {
    let cmd = commit(t, "", (keys, payloads), &[], &[], &[]);
    let what = format!("storing {} result(s)", keys.len());
    stats.round_trip();
    backend
        .write_until_done(&what, &cmd)
        .await?
        .map_err(BrokerError::Redis)?;
    stats.add_stored(keys.len() as u64);
    Ok(())
}

/// The list pushes of `follow_ups`: each on every queue its
/// exchange and routing key route it to, at its priority step. The
/// binding tables of the non-default exchanges named are read first (one
/// round trip, none when every follow-up goes to the default exchange).
/// A follow-up no queue receives is logged as an error, and its origin
/// (when still unacked) goes into `withheld`: that ack is not sent.
pub(super) async fn route_follow_ups(
    follow_ups: &[FollowUp],
    t: &Targets,
    stats: &BrokerStats,
    withheld: &mut HashSet<String>,
) -> Result<Vec<Push>, BrokerError> {
    if follow_ups.is_empty() {
        return Ok(Vec::new());
    }
    let keys = &t.broker.settings().keys;
    let mut tables: BTreeMap<&str, Vec<Vec<u8>>> = follow_ups
        .iter()
        .map(|f| f.exchange.as_str())
        .filter(|e| !e.is_empty())
        .map(|e| (e, Vec::new()))
        .collect();
    if !tables.is_empty() {
        let mut pipe = redis::pipe();
        for exchange in tables.keys() {
            pipe.cmd("SMEMBERS").arg(keys.binding_key(exchange));
        }
        stats.round_trip();
        let read: Vec<Vec<Vec<u8>>> = t
            .broker
            .call_until_done("reading the bindings", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        for (table, members) in tables.values_mut().zip(read) {
            *table = members;
        }
    }
    let mut pushes = Vec::with_capacity(follow_ups.len());
    for f in follow_ups {
        let queues = match tables.get(f.exchange.as_str()) {
            Some(table) => super::bindings::route(table, &f.routing_key, &keys.sep),
            None if f.routing_key.is_empty() => Vec::new(),
            None => vec![f.routing_key.clone()],
        };
        if queues.is_empty() {
            unroutable(f);
            if let Some(o) = &f.origin {
                withheld.insert(o.clone());
            }
        }
        for q in queues {
            pushes.push(Push {
                list: keys.queue_key(&q, f.priority),
                payload: f.payload.clone(),
                // A once-key lives beside the lists, under their prefix.
                once: f.once.as_deref().map(|o| keys.prefixed(o)),
            });
        }
    }
    Ok(pushes)
}

/// Logs a follow-up that no queue is bound to receive.
fn unroutable(f: &FollowUp) {
    let fate = if f.origin.is_some() {
        "the message it came from stays unacked"
    } else {
        "it is lost (the message it came from was acked when its task started)"
    };
    tracing::error!(
        "cannot send a follow-up: no queue is bound to exchange {:?} with routing key {:?}; {fate}",
        f.exchange,
        f.routing_key
    );
}

/// A concluded chord whose messages go to another broker (see
/// [`Targets::forward`]): send `publish`, then clean up `group`.
#[derive(Debug)]
#[cfg_attr(not(feature = "amqp"), allow(dead_code))] // read by the AMQP outbox
pub(crate) struct Concluded {
    /// The body (or its link errors), in order.
    pub(crate) publish: Vec<crate::broker::Publish>,
    /// The part's still unacked delivery, whose ack waits for them.
    pub(crate) origin: Option<String>,
    /// The chord's group, whose keys are cleaned up once the messages
    /// are confirmed.
    pub(crate) group: String,
}
