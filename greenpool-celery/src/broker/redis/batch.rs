//! Writes of the worker, in order and in batches: results, follow-up
//! messages and acks queue up while the previous round trip is in flight
//! and go out together in the next one.
//!
//! # Store, then ack
//!
//! Operations are queued in the order the worker makes them (a request
//! queues its result and follow-ups before its ack) and batches are sent
//! strictly one after the other, each retried until it is written: a
//! batch never starts before every earlier one is in Redis. Within a batch
//! the [`COMMIT`](super::scripts::COMMIT) script writes the results, then
//! the follow-up messages (retries, chain steps, links), then the acks, in
//! one atomic step. So an ack is never written before the writes queued
//! ahead of it, and a batch the server refuses (at `maxmemory` with
//! `noeviction`, say) writes nothing, acks included.
//!
//! With the result backend on another server (or database) the results of
//! a batch go to it first; the broker part of that batch (follow-ups and
//! acks) goes only once they are stored, so the order holds across the two
//! connections. The two stages overlap across batches (the results of
//! batch N+1 travel while the acks of batch N do), which keeps two round
//! trips in flight as two independent writers would.
//!
//! # Routing follow-ups
//!
//! A follow-up names an exchange and a routing key, as Celery publishes
//! it. Before a batch's COMMIT the broker stage resolves them to queue
//! lists as kombu does (see [`super::bindings::route`]): the default
//! exchange by queue name, any other through its binding table, read
//! with one `SMEMBERS` pipeline for the exchanges the batch names (no
//! read for a batch without follow-ups to such an exchange). A follow-up
//! that no queue receives is not pushed: it is logged as an error and
//! the ack of the late-ack delivery it came from is held back (in this
//! batch or a later one), so that message stays in `unacked`.
//!
//! A batch whose reply was lost is sent again; its once-key (set by the
//! script's first write, kept a day) makes the second run a no-op, so
//! follow-up messages are never pushed twice.
//!
//! # Outages
//!
//! While a connection is down the batch waits on its link's reconnection
//! and later operations queue behind it, in memory: nothing is dropped.
//! When the link gives up, the held operations are logged by count and
//! dropped (their messages are still in `unacked` and come back after the
//! visibility timeout), and [`Batcher::failure`] tells the worker to stop.
//! A batch the server rejects for good (an error retrying cannot fix) is
//! dropped whole with one log line, for the same reason.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::scripts::Scripts;
use crate::broker::keys::{self, UNACKED, UNACKED_INDEX};
use crate::broker::Publish;
use crate::conn::Link;
use crate::error::BrokerError;
use crate::stats::BrokerStats;

/// Most operations sent in one round trip.
const MAX_BATCH: usize = 1024;

enum Op {
    Ack(String),
    Store {
        key: String,
        payload: String,
    },
    Push(Box<FollowUp>),
    Join(Box<super::chord::Joining>),
    // Sent only by the AMQP outbox, for a Redis result backend.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    Delete(Vec<String>),
    Flush(oneshot::Sender<()>),
}

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
    pub(crate) forward: Option<mpsc::UnboundedSender<super::chord::Concluded>>,
}

/// A background task that sends queued operations in batches.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Op>,
    task: Mutex<Option<JoinHandle<()>>>,
    failed: Arc<Mutex<Option<String>>>,
    gave_up: Arc<tokio::sync::Notify>,
}

impl Batcher {
    /// Starts the sender task.
    pub(crate) fn spawn(targets: Targets, stats: Arc<BrokerStats>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(Mutex::new(None));
        let gave_up = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(
            rx,
            targets,
            stats,
            Arc::clone(&failed),
            Arc::clone(&gave_up),
        ));
        Batcher {
            tx,
            task: Mutex::new(Some(task)),
            failed,
            gave_up,
        }
    }

    /// Queues the ack of `tag` (removal from `unacked` and `unacked_index`).
    pub(crate) fn ack(&self, tag: String) {
        let _ = self.tx.send(Op::Ack(tag));
    }

    /// Queues a result store on `key`.
    pub(crate) fn store(&self, key: String, payload: String) {
        let _ = self.tx.send(Op::Store { key, payload });
    }

    /// Queues a follow-up message: LPUSHed on every queue its exchange
    /// and routing key route it to (see [`super::bindings::route`]).
    /// When none does, it is logged as an error and the ack of `origin`
    /// (the delivery it came from, if still unacked) is not sent.
    pub(crate) fn push(&self, publish: Publish, origin: Option<String>) {
        if let Some(f) = FollowUp::of(publish, origin) {
            let _ = self.tx.send(Op::Push(Box::new(f)));
        }
    }

    /// Queues a finished chord part for its chord's join (after the
    /// results and follow-ups queued before it, before the acks queued
    /// after it): see [`super::chord`]. `origin` is the part's still
    /// unacked delivery, whose ack is withheld if the body cannot be
    /// routed.
    pub(crate) fn join(&self, part: crate::canvas::chord::ChordPart, origin: Option<String>) {
        let j = super::chord::Joining { part, origin };
        let _ = self.tx.send(Op::Join(Box::new(j)));
    }

    /// Queues the clean-up of the chords of `keys`, group ids (concluded,
    /// their forwarded messages confirmed), after the next batch's writes.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub(crate) fn delete(&self, keys: Vec<String>) {
        let _ = self.tx.send(Op::Delete(keys));
    }

    /// Waits until everything queued before this call has been written
    /// (or dropped, once a link gave up).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Why the batcher stopped writing, once a link gave up.
    pub(crate) fn failure(&self) -> Option<BrokerError> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .map(BrokerError::GaveUp)
    }

    /// Resolves once a link gave up (never otherwise).
    pub(crate) async fn gave_up(&self) {
        loop {
            let notified = self.gave_up.notified();
            if self.failure().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Writes what is queued, then stops the sender task.
    pub(crate) async fn close(&self) {
        self.flush().await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// One batch, split by kind.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) acks: Vec<String>,
    pub(super) store_keys: Vec<String>,
    pub(super) store_payloads: Vec<String>,
    pub(super) follow_ups: Vec<FollowUp>,
    /// Chord parts to join, before the broker part of the batch.
    pub(super) joins: Vec<super::chord::Joining>,
    /// Groups of concluded chords, cleaned up once the broker part is
    /// written.
    pub(super) cleanup: Vec<String>,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.acks.is_empty()
            && self.store_keys.is_empty()
            && self.follow_ups.is_empty()
            && self.cleanup.is_empty()
    }
}

/// The COMMIT call for results `stores` (keys, payloads), `pushes` and
/// `acks`, under `once` (`""`: no pushes, no once-key needed).
fn commit(
    sha: &str,
    once: &str,
    expires: u64,
    stores: (&[String], &[String]),
    pushes: &[Push],
    acks: &[String],
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(3 + stores.0.len() + 2 * pushes.len())
        .arg(UNACKED)
        .arg(UNACKED_INDEX)
        .arg(once)
        .arg(stores.0);
    for p in pushes {
        cmd.arg(&p.list).arg(p.once.as_deref().unwrap_or(""));
    }
    cmd.arg(expires)
        .arg(stores.0.len())
        .arg(pushes.len())
        .arg(stores.1);
    for p in pushes {
        cmd.arg(&p.payload);
    }
    cmd.arg(acks);
    cmd
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Op>,
    targets: Targets,
    stats: Arc<BrokerStats>,
    failed: Arc<Mutex<Option<String>>>,
    gave_up: Arc<tokio::sync::Notify>,
) {
    // Two stages: results to a separate backend, then the broker part of
    // the same batch. The stages overlap across batches (batch N+1's
    // results go out while batch N's acks do), never within one.
    let (to_broker, from_backend) = mpsc::unbounded_channel::<Batch>();
    let broker_stage = tokio::spawn(broker_stage(
        from_backend,
        targets.clone(),
        Arc::clone(&stats),
        Arc::clone(&failed),
        Arc::clone(&gave_up),
    ));
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut b = Batch::default();
        for op in ops.drain(..) {
            match op {
                Op::Ack(tag) => b.acks.push(tag),
                Op::Store { key, payload } => {
                    b.store_keys.push(key);
                    b.store_payloads.push(payload);
                }
                Op::Push(f) => b.follow_ups.push(*f),
                Op::Join(j) => b.joins.push(*j),
                Op::Delete(keys) => b.cleanup.extend(keys),
                Op::Flush(w) => b.waiters.push(w),
            }
        }
        // Stores to a separate backend and joins queue into the same
        // batch: the results of parts first, then their joins.
        if let Some(backend) = targets
            .backend
            .as_ref()
            .filter(|_| !b.store_keys.is_empty())
        {
            if !is_dead(&failed) {
                if let Err(e) = store_results(&b, backend, &targets, &stats).await {
                    give_up(&b, e, &failed, &gave_up);
                    // Nothing of this batch may be acked now.
                    b.acks.clear();
                    b.follow_ups.clear();
                }
            }
            b.store_keys.clear();
            b.store_payloads.clear();
        }
        if !b.joins.is_empty() && !is_dead(&failed) {
            if let Err(e) = super::chord::join_all(&mut b, &targets, &stats).await {
                give_up(&b, e, &failed, &gave_up);
                b.acks.clear();
                b.follow_ups.clear();
                b.store_keys.clear();
                b.store_payloads.clear();
            }
        }
        if to_broker.send(b).is_err() {
            break;
        }
    }
    drop(to_broker);
    let _ = broker_stage.await;
}

fn is_dead(failed: &Mutex<Option<String>>) -> bool {
    failed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// Logs a batch that cannot be written and, when a link gave up, records
/// why.
fn give_up(
    b: &Batch,
    e: BrokerError,
    failed: &Mutex<Option<String>>,
    gave_up: &tokio::sync::Notify,
) {
    tracing::error!(
        "dropping {} result(s), {} follow-up message(s) and {} ack(s): {e}; \
         their messages stay unacked and come back after the visibility timeout",
        b.store_keys.len(),
        b.follow_ups.len(),
        b.acks.len()
    );
    if let BrokerError::GaveUp(why) = e {
        *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        gave_up.notify_waiters();
    }
}

/// The broker stage: follow-ups and acks (and results when they share
/// the broker's server), batches that queued up merged into one COMMIT.
async fn broker_stage(
    mut rx: mpsc::UnboundedReceiver<Batch>,
    targets: Targets,
    stats: Arc<BrokerStats>,
    failed: Arc<Mutex<Option<String>>>,
    gave_up: Arc<tokio::sync::Notify>,
) {
    let mut batches = Vec::new();
    // Deliveries whose follow-up no queue received; a request's ack may
    // come in a later batch than its follow-up.
    let mut withheld = HashSet::new();
    while rx.recv_many(&mut batches, 64).await > 0 {
        let mut b = Batch::default();
        for mut next in batches.drain(..) {
            b.acks.append(&mut next.acks);
            b.store_keys.append(&mut next.store_keys);
            b.store_payloads.append(&mut next.store_payloads);
            b.follow_ups.append(&mut next.follow_ups);
            b.cleanup.append(&mut next.cleanup);
            b.waiters.append(&mut next.waiters);
        }
        if !b.is_empty() && !is_dead(&failed) {
            let written = match route_follow_ups(&b, &targets, &stats, &mut withheld).await {
                Ok(pushes) => {
                    if !withheld.is_empty() {
                        b.acks.retain(|t| !withheld.remove(t));
                    }
                    commit_broker(&b, &pushes, &targets, &stats).await
                }
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => super::chord::clean_up(&b.cleanup, &targets, &stats).await,
                Err(e) => give_up(&b, e, &failed, &gave_up),
            }
        }
        for w in b.waiters {
            let _ = w.send(());
        }
    }
}

/// Stores a batch's results on the separate backend, retrying through
/// outages.
async fn store_results(
    b: &Batch,
    backend: &Link,
    t: &Targets,
    stats: &BrokerStats,
) -> Result<(), BrokerError> {
    store_on(backend, t, stats, &b.store_keys, &b.store_payloads).await
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
    let cmd = commit(
        &t.scripts.commit,
        "",
        t.result_expires,
        (keys, payloads),
        &[],
        &[],
    );
    let what = format!("storing {} result(s)", keys.len());
    stats.round_trip();
    backend
        .call_until_done(&what, |mut conn| {
            let cmd = &cmd;
            async move { cmd.query_async::<i64>(&mut conn).await }
        })
        .await?
        .map_err(BrokerError::Redis)?;
    stats.add_stored(keys.len() as u64);
    Ok(())
}

/// Writes the broker part of a batch in one COMMIT, retrying through
/// outages; an error only when the link gives up or the server rejects
/// the batch for good.
async fn commit_broker(
    b: &Batch,
    pushes: &[Push],
    t: &Targets,
    stats: &BrokerStats,
) -> Result<(), BrokerError> {
    let stores = (b.store_keys.as_slice(), b.store_payloads.as_slice());
    let once = if pushes.is_empty() {
        String::new()
    } else {
        format!("greenpool.commit.{}", crate::uuid::uuid4())
    };
    let cmd = commit(
        &t.scripts.commit,
        &once,
        t.result_expires,
        stores,
        pushes,
        &b.acks,
    );
    let what = format!(
        "writing {} result(s), {} follow-up(s) and {} ack(s)",
        stores.0.len(),
        pushes.len(),
        b.acks.len()
    );
    stats.round_trip();
    t.broker
        .call_until_done(&what, |mut conn| {
            let cmd = &cmd;
            async move { cmd.query_async::<i64>(&mut conn).await }
        })
        .await?
        .map_err(BrokerError::Redis)?;
    stats.add_stored(stores.0.len() as u64);
    stats.add_acked(b.acks.len() as u64);
    Ok(())
}

/// The list pushes of a batch's follow-ups: each on every queue its
/// exchange and routing key route it to, at its priority step. The
/// binding tables of the non-default exchanges named are read first (one
/// round trip, none when every follow-up goes to the default exchange).
/// A follow-up no queue receives is logged as an error, and its origin
/// (when still unacked) goes into `withheld`: that ack is not sent.
async fn route_follow_ups(
    b: &Batch,
    t: &Targets,
    stats: &BrokerStats,
    withheld: &mut HashSet<String>,
) -> Result<Vec<Push>, BrokerError> {
    if b.follow_ups.is_empty() {
        return Ok(Vec::new());
    }
    let mut tables: BTreeMap<&str, Vec<Vec<u8>>> = b
        .follow_ups
        .iter()
        .map(|f| f.exchange.as_str())
        .filter(|e| !e.is_empty())
        .map(|e| (e, Vec::new()))
        .collect();
    if !tables.is_empty() {
        let mut pipe = redis::pipe();
        for exchange in tables.keys() {
            pipe.cmd("SMEMBERS").arg(keys::binding_key(exchange));
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
    let mut pushes = Vec::with_capacity(b.follow_ups.len());
    for f in &b.follow_ups {
        let queues = match tables.get(f.exchange.as_str()) {
            Some(table) => super::bindings::route(table, &f.routing_key),
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
                list: keys::queue_key(&q, f.priority),
                payload: f.payload.clone(),
                once: f.once.clone(),
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
