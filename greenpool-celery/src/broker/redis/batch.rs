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

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub(crate) use super::writes::Targets;
use super::writes::{commit, route_follow_ups, store_on, FollowUp, Push};
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
            let joins = std::mem::take(&mut b.joins);
            match super::chord::join_all(joins, &targets, &stats).await {
                Ok(j) => {
                    b.follow_ups.extend(j.follow_ups);
                    b.store_keys.extend(j.store_keys);
                    b.store_payloads.extend(j.store_payloads);
                    b.cleanup.extend(j.cleanup);
                }
                Err(e) => {
                    give_up(&b, e, &failed, &gave_up);
                    b.acks.clear();
                    b.follow_ups.clear();
                    b.store_keys.clear();
                    b.store_payloads.clear();
                }
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
            let written =
                match route_follow_ups(&b.follow_ups, &targets, &stats, &mut withheld).await {
                    Ok(pushes) => {
                        if !withheld.is_empty() {
                            b.acks.retain(|t| !withheld.remove(t));
                        }
                        commit_broker(&b, &pushes, &targets, &stats).await
                    }
                    Err(e) => Err(e),
                };
            match written {
                Ok(()) if targets.backend.is_some() => {
                    super::chord::clean_up(&b.cleanup, &targets, &stats).await;
                }
                Ok(()) => {}
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
        let keys = &t.broker.settings().keys;
        keys.prefixed(&format!("greenpool.commit.{}", crate::uuid::uuid4()))
    };
    // A concluded chord whose keys live on this server is cleaned up in
    // the same step as its body's push; on a separate backend, after it.
    let done: &[String] = if t.backend.is_none() { &b.cleanup } else { &[] };
    let cmd = commit(t, &once, stores, pushes, done, &b.acks);
    let what = format!(
        "writing {} result(s), {} follow-up(s) and {} ack(s)",
        stores.0.len(),
        pushes.len(),
        b.acks.len()
    );
    stats.round_trip();
    t.broker
        .write_until_done(&what, &cmd)
        .await?
        .map_err(BrokerError::Redis)?;
    stats.add_stored(stores.0.len() as u64);
    stats.add_acked(b.acks.len() as u64);
    Ok(())
}
