//! kombu's Redis transport, consumer side: fetching with ack emulation,
//! bindings, restores and the visibility-timeout sweep.
//!
//! # The fetch, and what window remains
//!
//! kombu takes one message per BRPOP and records it in `unacked` in a
//! second round trip, so a worker that dies (or a connection that breaks)
//! between the two loses that message. Here a fetch has two steps, and a
//! message is at every instant in its queue, in an in-flight list of the
//! worker that took it, or in `unacked`:
//!
//! 1. **Take**: one short script ([`TAKE`](crate::scripts::TAKE)) moves up
//!    to the free prefetch budget from the queue keys into this worker's
//!    in-flight lists (one per queue key, named after the worker:
//!    [`inflight_key`](super::keys::inflight_key)), in the same round trip
//!    as the `LRANGE`s that read them back. Redis copies the messages
//!    itself (`SORT … STORE`, `LTRIM`): the script makes no string per
//!    message, which is what made the earlier one-script fetch (pop and
//!    record together) four times as expensive for Redis.
//! 2. **Record**: the worker reads each message as bytes and parses it
//!    once, in Rust; its delivery tag is its envelope's
//!    `properties.delivery_tag`. One `MULTI`/`EXEC` writes kombu's
//!    bookkeeping (`unacked` tag -> `[raw, "", queue]`, `unacked_index`
//!    tag -> delivery time) and trims what it recorded off the in-flight
//!    lists. A message that is not UTF-8, not JSON or has no tag is not
//!    recorded: it is trimmed off too and logged once with its reason by
//!    its handler (with a FAILURE result where its task id can be read).
//!    Step 2 is idempotent (the same fields, the same scores; the trim
//!    counts what was read, and nothing is added to a non-empty in-flight
//!    list), so it is retried across reconnections until it goes through.
//!
//! A message over the size limit never leaves Redis: the take script
//! measures the moved batch (`MEMORY USAGE`), and only when the batch as
//! a whole is over the limit measures its messages one by one, removes
//! those over it and returns their size and correlation id.
//!
//! There is no blocking pop: a blocking pop hands a message to the socket
//! before it is anywhere else, so a reply lost to a cut or a stall would
//! lose it. While every queue is empty the consumer polls the take
//! script, sleeping 1 ms doubling to 100 ms between tries.
//!
//! What is in an in-flight list is never lost:
//! * a reply of step 1 lost to a cut: the next fetch reads the lists again
//!   (the take script adds nothing to a list that is not empty), and step
//!   2 records them;
//! * a worker that dies between the steps: at its next start it returns
//!   its own lists to the front of their queues; and every worker sets a
//!   liveness key with an expiry ([`LIVENESS_TTL`], refreshed every
//!   [`LIVENESS_REFRESH`]) and, at start and at every restore sweep,
//!   returns the lists of workers whose key is gone
//!   ([`RETURN`](crate::scripts::RETURN), atomic).
//!
//! The window that remains is a delay, not a loss: a dead worker's
//! in-flight messages wait until its liveness key expires and a sweep
//! runs (at most [`LIVENESS_TTL`] plus the restore interval), or until it
//! starts again. A worker that is alive but cannot reach Redis for longer
//! than [`LIVENESS_TTL`] may have its in-flight messages returned while it
//! still records them: those run twice (a duplicate, as with kombu's
//! visibility timeout), none is lost. Two workers started with the same
//! name share their in-flight lists; each returns them at start.

pub(crate) mod consumer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::keys::{self, UNACKED, UNACKED_INDEX, UNACKED_MUTEX, WORKERS};
use super::{ActiveQueues, ConsumedQueue, Delivery, Fetched, Oversized};
use crate::conn::Link;
use crate::error::BrokerError;
use crate::scripts::Scripts;
use crate::stats::BrokerStats;

/// The oldest Redis the worker runs on (multi-field `HSET`, `MEMORY`).
const MIN_VERSION: (u32, u32) = (4, 0);

/// How long a worker's liveness key lives without a refresh; once it is
/// gone, other workers return the worker's in-flight lists.
pub(crate) const LIVENESS_TTL: Duration = Duration::from_secs(60);

/// How often a running worker refreshes its liveness key.
pub(crate) const LIVENESS_REFRESH: Duration = Duration::from_secs(10);

/// Most bytes of unacked entries written by one `MULTI`/`EXEC` of step 2
/// (a larger fetch is recorded in several, each atomic), well under
/// Redis' `client-query-buffer-limit` (1 GiB by default).
const RECORD_CHUNK_BYTES: usize = 64 << 20;

/// Set to `1` (by fault tests only), the worker stops for good after
/// step 1 of its first fetch that took something, with a log line
/// `halted between the take and the record`, so that a test can kill it
/// there.
pub(crate) const HALT_AFTER_TAKE_ENV: &str = "GREENPOOL_FAULT_HALT_AFTER_TAKE";

/// One queue key and where its messages wait between the two steps.
#[derive(Debug, Clone)]
struct Pair {
    /// The queue list.
    key: String,
    /// This worker's in-flight list for it.
    flight: String,
}

/// A set of consumed queues and, for each, its keys in priority order
/// with this worker's in-flight list for each.
#[derive(Debug)]
struct Layout {
    queues: Arc<Vec<ConsumedQueue>>,
    pairs: Vec<Vec<Pair>>,
}

impl Layout {
    fn new(worker: &str, queues: Arc<Vec<ConsumedQueue>>) -> Self {
        let pairs = queues
            .iter()
            .map(|q| {
                keys::PRIORITY_STEPS
                    .iter()
                    .map(|step| {
                        let key = keys::queue_key(&q.name, *step);
                        Pair {
                            flight: keys::inflight_key(worker, &key),
                            key,
                        }
                    })
                    .collect()
            })
            .collect();
        Layout { queues, pairs }
    }
}

/// A connection to the broker for one worker.
#[derive(Debug)]
pub(crate) struct RedisBroker {
    link: Arc<Link>,
    scripts: Scripts,
    /// The queues consumed, changed at run time by `add_consumer` and
    /// `cancel_consumer`; each fetch reads the current set.
    queues: Arc<ActiveQueues>,
    /// The keys of the set last read (rebuilt when the set changes).
    layout: Mutex<Arc<Layout>>,
    /// This worker's name, which names its in-flight lists.
    worker: String,
    /// Rotation of the queue order, as kombu's round-robin cycle.
    turn: AtomicUsize,
    /// Move one message at a time in the take script (no `SORT`).
    single_moves: bool,
    max_message_size: usize,
    /// See [`HALT_AFTER_TAKE_ENV`].
    halt_after_take: bool,
    stats: Arc<BrokerStats>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `major.minor` from `INFO server`.
fn server_version(info: &str) -> Option<(u32, u32, String)> {
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, v.to_owned()))
}

/// The keys a fetch takes from, priority-major (every queue's plain key
/// first, then every queue's step-3 key, and so on: kombu's order), the
/// queues rotated by `turn`; each with the index of its queue.
fn take_order(pairs: &[Vec<Pair>], turn: usize) -> Vec<(usize, &Pair)> {
    let n = pairs.len();
    let mut order = Vec::with_capacity(n * keys::PRIORITY_STEPS.len());
    for step in 0..keys::PRIORITY_STEPS.len() {
        for i in 0..n {
            let q = (i + turn) % n;
            if let Some(p) = pairs.get(q).and_then(|ps| ps.get(step)) {
                order.push((q, p));
            }
        }
    }
    order
}

/// kombu's unacked entry for a message taken from `queue_json`'s queue:
/// `[raw, "", queue]` (the default exchange and the queue, so that a
/// restore, ours or kombu's, puts it back where it came from).
fn unacked_entry(raw: &str, queue_json: &str) -> Vec<u8> {
    let mut e = Vec::with_capacity(raw.len() + queue_json.len() + 8);
    e.push(b'[');
    e.extend_from_slice(raw.as_bytes());
    e.extend_from_slice(b", \"\", ");
    e.extend_from_slice(queue_json.as_bytes());
    e.push(b']');
    e
}

/// The messages of one in-flight list, as read back in step 1.
struct Taken {
    flight: String,
    queue: usize,
    raws: Vec<Vec<u8>>,
}

impl RedisBroker {
    /// Checks the server version and loads the scripts on `link`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Version`] for a server older than Redis 4.0, or any
    /// Redis error.
    pub(crate) async fn new(
        link: Arc<Link>,
        worker: String,
        queues: Arc<ActiveQueues>,
        legacy_fetch: bool,
        max_message_size: usize,
        stats: Arc<BrokerStats>,
    ) -> Result<Self, BrokerError> {
        let (info, scripts) = link
            .call_until_done("loading the scripts", |mut conn| async move {
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await?;
                let scripts = Scripts::load(&mut conn).await?;
                Ok((info, scripts))
            })
            .await?
            .map_err(BrokerError::Redis)?;
        let (major, minor, version) = server_version(&info).unwrap_or((0, 0, "unknown".to_owned()));
        if (major, minor) < MIN_VERSION {
            return Err(BrokerError::Version {
                found: version,
                needed: "4.0",
            });
        }
        let layout = Mutex::new(Arc::new(Layout::new(&worker, queues.snapshot())));
        Ok(RedisBroker {
            single_moves: legacy_fetch,
            link,
            scripts,
            queues,
            layout,
            worker,
            turn: AtomicUsize::new(0),
            max_message_size,
            halt_after_take: std::env::var(HALT_AFTER_TAKE_ENV).is_ok_and(|v| v == "1"),
            stats,
        })
    }

    /// The broker's link.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The loaded scripts.
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Adds each queue to the binding table of its exchange (as Celery
    /// declares `Queue(name, Exchange(name), routing_key=name)`), so that
    /// producers publishing to the exchange reach our lists.
    pub(crate) async fn declare(&self) -> Result<(), BrokerError> {
        self.stats.round_trip();
        bind(&self.link, &self.queues.snapshot()).await
    }

    /// The layout of the current queue set, and whether it is new since
    /// the last call (its in-flight lists are then registered before the
    /// first take from them).
    fn layout(&self) -> (Arc<Layout>, bool) {
        let now = self.queues.snapshot();
        let mut cur = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&cur.queues, &now) {
            return (Arc::clone(&cur), false);
        }
        let fresh = Arc::new(Layout::new(&self.worker, now));
        *cur = Arc::clone(&fresh);
        (fresh, true)
    }

    /// Adds the in-flight lists of `layout` to this worker's registered
    /// lists (never removes any: a cancelled queue's leftovers are still
    /// returned at the next start or by another worker).
    async fn register_lists(&self, layout: &Layout) -> Result<(), BrokerError> {
        let mut hset = redis::cmd("HSET");
        hset.arg(keys::inflight_hash(&self.worker));
        let mut any = false;
        for p in layout.pairs.iter().flatten() {
            hset.arg(&p.key).arg(&p.flight);
            any = true;
        }
        if !any {
            return Ok(());
        }
        self.stats.round_trip();
        self.link
            .call_until_done("registering in-flight lists", |mut conn| {
                let hset = &hset;
                async move { hset.query_async::<()>(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)
    }

    /// At start: returns this worker's in-flight lists (left by an earlier
    /// run that died between the steps of a fetch, under this name) to
    /// the front of their queues, then sets its liveness key and registers
    /// its lists so that others can return them if it dies. Returns how
    /// many messages went back.
    pub(crate) async fn register(&self) -> Result<u64, BrokerError> {
        let hash = keys::inflight_hash(&self.worker);
        let earlier = self.registered_lists().await?;
        let (layout, _) = self.layout();
        let mut all: Vec<(String, String)> = layout
            .pairs
            .iter()
            .flatten()
            .map(|p| (p.key.clone(), p.flight.clone()))
            .collect();
        for (key, flight) in earlier {
            if !all.iter().any(|(k, f)| *k == key && *f == flight) {
                all.push((key, flight));
            }
        }
        let back = self.give_back(&self.worker, &all, true).await?.unwrap_or(0);
        if back > 0 {
            tracing::warn!(
                "Returned {back} message(s) a previous run of {} took but never recorded",
                self.worker
            );
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(keys::alive_key(&self.worker))
            .arg("1")
            .arg("EX")
            .arg(LIVENESS_TTL.as_secs())
            .ignore();
        pipe.cmd("DEL").arg(&hash).ignore();
        let mut hset = redis::cmd("HSET");
        hset.arg(&hash);
        for p in layout.pairs.iter().flatten() {
            hset.arg(&p.key).arg(&p.flight);
        }
        pipe.add_command(hset).ignore();
        pipe.cmd("SADD").arg(WORKERS).arg(&self.worker).ignore();
        self.stats.round_trip();
        write_pipe(&self.link, "registering the worker", &pipe).await?;
        Ok(back)
    }

    /// Refreshes this worker's liveness key.
    pub(crate) async fn refresh_liveness(&self) -> Result<(), BrokerError> {
        let key = keys::alive_key(&self.worker);
        self.stats.round_trip();
        self.link
            .call(|mut conn| {
                let key = &key;
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg("1")
                        .arg("EX")
                        .arg(LIVENESS_TTL.as_secs())
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))
    }

    /// This worker's registered `(queue key, in-flight list)` pairs.
    async fn registered_lists(&self) -> Result<Vec<(String, String)>, BrokerError> {
        let hash = keys::inflight_hash(&self.worker);
        self.stats.round_trip();
        self.link
            .call_until_done("reading the in-flight lists", |mut conn| {
                let hash = &hash;
                async move { redis::cmd("HGETALL").arg(hash).query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)
    }

    /// At a clean stop, once no fetch runs: returns whatever is still in
    /// this worker's in-flight lists (nothing, unless the last record
    /// failed) and forgets the worker.
    pub(crate) async fn unregister(&self) -> Result<(), BrokerError> {
        // Every list registered, also those of queues cancelled since.
        let all = self.registered_lists().await?;
        self.give_back(&self.worker, &all, true).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SREM").arg(WORKERS).arg(&self.worker).ignore();
        pipe.cmd("DEL")
            .arg(keys::inflight_hash(&self.worker))
            .arg(keys::alive_key(&self.worker))
            .ignore();
        self.stats.round_trip();
        self.link
            .call(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))
    }

    /// Returns the in-flight lists of every other worker whose liveness
    /// key is gone. Returns how many messages went back.
    pub(crate) async fn return_dead(&self) -> Result<u64, BrokerError> {
        self.stats.round_trip();
        let workers: Vec<String> = self
            .link
            .call(|mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(WORKERS)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        let others: Vec<String> = workers.into_iter().filter(|w| *w != self.worker).collect();
        if others.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for w in &others {
            pipe.cmd("EXISTS").arg(keys::alive_key(w));
            pipe.cmd("HGETALL").arg(keys::inflight_hash(w));
        }
        self.stats.round_trip();
        let found: Vec<(bool, HashMap<String, String>)> = self
            .link
            .call(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        let mut total = 0;
        for (w, (alive, lists)) in others.iter().zip(found) {
            if alive {
                continue;
            }
            let mut lists: Vec<(String, String)> = lists.into_iter().collect();
            lists.sort();
            if let Some(n) = self.give_back(w, &lists, false).await? {
                if n > 0 {
                    tracing::warn!(
                        "Returned {n} message(s) taken by worker {w}, which is gone, to their queues"
                    );
                }
                total += n;
            }
        }
        Ok(total)
    }

    /// Runs [`RETURN`](crate::scripts::RETURN) for `worker`'s `lists`
    /// (queue key, in-flight list). `None` when the worker is alive.
    async fn give_back(
        &self,
        worker: &str,
        lists: &[(String, String)],
        own: bool,
    ) -> Result<Option<u64>, BrokerError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.scripts.give_back)
            .arg(3 + 2 * lists.len())
            .arg(keys::alive_key(worker))
            .arg(WORKERS)
            .arg(keys::inflight_hash(worker));
        for (key, flight) in lists {
            cmd.arg(key).arg(flight);
        }
        cmd.arg(worker).arg(if own { "1" } else { "0" });
        self.stats.round_trip();
        let n: i64 = self
            .link
            .call_until_done("returning in-flight messages", |mut conn| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        Ok(u64::try_from(n).ok())
    }

    /// Takes up to `max` messages without blocking, in kombu's key order
    /// (priority-major, queues rotated round-robin), and records each in
    /// the unacked hash under delivery time `stamp` (the two steps of the
    /// module doc). Messages left in the in-flight lists by a fetch that
    /// failed are taken first.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Redis`] when step 1 fails (the caller recovers the
    /// link before it tries again; what it moved is read by the next
    /// fetch) or when step 2 meets an error that retrying will not fix;
    /// [`BrokerError::GaveUp`] when the link gives up during step 2.
    pub(crate) async fn fetch(&self, max: usize, stamp: f64) -> Result<Fetched, BrokerError> {
        let (layout, fresh) = self.layout();
        if fresh {
            self.register_lists(&layout).await?;
        }
        if layout.pairs.is_empty() {
            // Every queue was cancelled: nothing to read until one is added.
            return Ok(Fetched::default());
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let order = take_order(&layout.pairs, turn);
        let mut pipe = redis::pipe();
        let mut take = redis::cmd("EVALSHA");
        take.arg(&self.scripts.take).arg(2 * order.len());
        for (_, p) in &order {
            take.arg(&p.key).arg(&p.flight);
        }
        take.arg(max.max(1))
            .arg(self.max_message_size)
            .arg(if self.single_moves { "1" } else { "0" });
        pipe.add_command(take);
        for (_, p) in &order {
            pipe.cmd("LRANGE").arg(&p.flight).arg(0).arg(-1);
        }
        self.stats.round_trip();
        let reply: Vec<redis::Value> = self
            .link
            .call(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        let mut reply = reply.into_iter();
        let mut out = Fetched::default();
        if let Some(redis::Value::Array(big)) = reply.next() {
            out.oversized = Self::oversized(&layout, big, &order);
        }
        let mut taken: Vec<Taken> = Vec::new();
        for ((q, p), lr) in order.iter().zip(reply) {
            let raws: Vec<Vec<u8>> = match lr {
                redis::Value::Array(items) => items
                    .into_iter()
                    .filter_map(|v| match v {
                        redis::Value::BulkString(b) => Some(b),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if !raws.is_empty() {
                taken.push(Taken {
                    flight: p.flight.clone(),
                    queue: *q,
                    raws,
                });
            }
        }
        if taken.is_empty() {
            self.stats.add_fetched(out.oversized.len() as u64);
            return Ok(out);
        }
        if self.halt_after_take {
            tracing::warn!("{HALT_AFTER_TAKE_ENV}: halted between the take and the record");
            std::future::pending::<()>().await;
        }
        self.record(&layout, taken, stamp, &mut out).await?;
        self.stats
            .add_fetched((out.deliveries.len() + out.oversized.len()) as u64);
        Ok(out)
    }

    /// Reads the take script's reply: the messages it removed for their
    /// size.
    fn oversized(
        layout: &Layout,
        reply: Vec<redis::Value>,
        order: &[(usize, &Pair)],
    ) -> Vec<Oversized> {
        use redis::Value;
        let mut out = Vec::new();
        let mut it = reply.into_iter();
        while let (Some(at), Some(size), Some(id)) = (it.next(), it.next(), it.next()) {
            let queue = match at {
                Value::Int(i) => usize::try_from(i)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| order.get(i))
                    .and_then(|(q, _)| layout.queues.get(*q))
                    .map(|q| q.name.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let id = match id {
                Value::BulkString(b) => String::from_utf8(b).unwrap_or_default(),
                _ => String::new(),
            };
            out.push(Oversized {
                queue,
                size: match size {
                    Value::Int(s) => u64::try_from(s).unwrap_or(0),
                    _ => 0,
                },
                id: (!id.is_empty()).then_some(id),
            });
        }
        out
    }

    /// Step 2: parses each taken message and, in `MULTI`/`EXEC` chunks,
    /// records those with a delivery tag in `unacked` / `unacked_index`
    /// and trims every message read off its in-flight list.
    async fn record(
        &self,
        layout: &Layout,
        taken: Vec<Taken>,
        stamp: f64,
        out: &mut Fetched,
    ) -> Result<(), BrokerError> {
        let at = format!("{stamp:.6}");
        let mut chunk = Chunk::new(&at);
        // Deliveries whose chunk is written; on a failure only those are
        // handed out (the rest stay in flight for the next fetch).
        let mut written = 0;
        for t in taken {
            let consumed = layout.queues.get(t.queue);
            let queue = consumed.map(|q| q.name.clone()).unwrap_or_default();
            let json = consumed.map_or("\"\"", |q| q.json.as_str());
            // The right end is where `RPOP` would have taken first.
            for raw in t.raws.into_iter().rev() {
                let d = Delivery::read(queue.clone(), raw);
                if chunk.bytes >= RECORD_CHUNK_BYTES {
                    if let Err(e) = self.write(&mut chunk).await {
                        return partial(out, written, e);
                    }
                    written = out.deliveries.len();
                }
                if let Some(tag) = &d.tag {
                    let entry = unacked_entry(&d.raw, json);
                    chunk.bytes += entry.len();
                    chunk.hset.arg(tag).arg(entry);
                    chunk.zadd.arg(&at).arg(tag);
                    chunk.tags += 1;
                }
                chunk.trim(&t.flight);
                out.deliveries.push(d);
            }
        }
        match self.write(&mut chunk).await {
            Ok(()) => Ok(()),
            Err(e) => partial(out, written, e),
        }
    }

    /// Writes one chunk of step 2 and starts the next.
    async fn write(&self, chunk: &mut Chunk) -> Result<(), BrokerError> {
        let at = chunk.at.clone();
        let done = std::mem::replace(chunk, Chunk::new(&at));
        if done.trims.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        if done.tags > 0 {
            pipe.add_command(done.hset).ignore();
            pipe.add_command(done.zadd).ignore();
        }
        for (flight, n) in &done.trims {
            // Off the right end, where the chunk's messages were read.
            let keep_to = -1 - i64::try_from(*n).unwrap_or(i64::MAX - 1);
            pipe.cmd("LTRIM").arg(flight).arg(0).arg(keep_to).ignore();
        }
        self.stats.round_trip();
        write_pipe(&self.link, "recording a fetch", &pipe).await
    }

    /// A fresh delivery time for [`RedisBroker::fetch`].
    pub(crate) fn stamp() -> f64 {
        now_secs()
    }

    /// Puts a delivered message back: RPUSH to the front of the queue it
    /// was fetched from (`leftmost = false`, a restore) or LPUSH to the
    /// back (a requeueing reject), with `redelivered` set, and removes it
    /// from `unacked`. Returns false if it was no longer unacked.
    pub(crate) async fn restore(&self, tag: &str, leftmost: bool) -> Result<bool, BrokerError> {
        self.stats.round_trip();
        let entry: Option<Vec<u8>> = self
            .link
            .call_until_done("reading an unacked message", |mut conn| async move {
                redis::cmd("HGET")
                    .arg(UNACKED)
                    .arg(tag)
                    .query_async(&mut conn)
                    .await
            })
            .await?
            .map_err(BrokerError::Redis)?;
        let Some(entry) = entry else {
            let _ = self
                .link
                .call(|mut conn| async move {
                    redis::cmd("ZREM")
                        .arg(UNACKED_INDEX)
                        .arg(tag)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
            return Ok(false);
        };
        let Some((payload, exchange, routing_key, priority)) = redelivered(&entry) else {
            tracing::error!("cannot restore message {tag}: unreadable unacked entry");
            return Ok(false);
        };
        let mut queues = self.lookup(&exchange, &routing_key).await?;
        queues.retain(|q| !q.is_empty());
        if queues.is_empty() {
            tracing::error!(
                "cannot restore message {tag}: no queue is bound to exchange {exchange:?} \
                 with routing key {routing_key:?}; it stays unacked"
            );
            return Ok(false);
        }
        let dests: Vec<String> = queues
            .iter()
            .map(|q| keys::queue_key(q, priority))
            .collect();
        self.stats.round_trip();
        let restored: i64 = self
            .link
            .call_until_done("restoring a message", |mut conn| {
                let (dests, payload) = (&dests, &payload);
                let sha = &self.scripts.restore;
                async move {
                    redis::cmd("EVALSHA")
                        .arg(sha)
                        .arg(dests.len() + 2)
                        .arg(UNACKED)
                        .arg(UNACKED_INDEX)
                        .arg(dests)
                        .arg(tag)
                        .arg(payload)
                        .arg(if leftmost { "1" } else { "0" })
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        Ok(restored == 1)
    }

    /// The queues bound to `exchange` under `routing_key`; the default
    /// exchange routes by queue name.
    async fn lookup(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        self.stats.round_trip();
        let members: Vec<Vec<u8>> = self
            .link
            .call_until_done("reading the bindings", |mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(keys::binding_key(exchange))
                    .query_async(&mut conn)
                    .await
            })
            .await?
            .map_err(BrokerError::Redis)?;
        let mut out: Vec<String> = members
            .iter()
            .filter_map(|m| {
                let m = std::str::from_utf8(m).ok()?;
                let mut parts = m.split(keys::SEP);
                let rk = parts.next()?;
                let _pattern = parts.next()?;
                let queue = parts.next()?;
                (rk == routing_key).then(|| queue.to_owned())
            })
            .collect();
        if out.is_empty() {
            out.push(routing_key.to_owned());
        }
        Ok(out)
    }

    /// The visibility-timeout sweep: under the `unacked_mutex` lock, puts
    /// back every message delivered more than `visibility_timeout` seconds
    /// ago, by any worker. Returns how many came back; 0 when another
    /// worker holds the lock.
    pub(crate) async fn restore_visible(
        &self,
        visibility_timeout: f64,
    ) -> Result<usize, BrokerError> {
        let token = crate::uuid::uuid4();
        self.stats.round_trip();
        let locked: Option<String> = self
            .link
            .call(|mut conn| {
                let token = &token;
                async move {
                    redis::cmd("SET")
                        .arg(UNACKED_MUTEX)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(300_000)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        if locked.is_none() {
            return Ok(0);
        }
        let ceiling = now_secs() - visibility_timeout;
        let result = async {
            self.stats.round_trip();
            let stale: Vec<String> = self
                .link
                .call(|mut conn| async move {
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(UNACKED_INDEX)
                        .arg(format!("{ceiling:.6}"))
                        .arg("-inf")
                        .query_async(&mut conn)
                        .await
                })
                .await
                .map_err(|e| BrokerError::Redis(e.error))?;
            let mut restored = 0;
            for tag in stale {
                if self.restore(&tag, false).await? {
                    restored += 1;
                }
            }
            Ok(restored)
        }
        .await;
        self.stats.round_trip();
        let _ = self
            .link
            .call(|mut conn| {
                let (sha, token) = (&self.scripts.unlock, &token);
                async move {
                    redis::cmd("EVALSHA")
                        .arg(sha)
                        .arg(1)
                        .arg(UNACKED_MUTEX)
                        .arg(token)
                        .query_async::<i64>(&mut conn)
                        .await
                }
            })
            .await;
        result
    }
}

/// After step 2 failed with `e`: keeps the first `written` deliveries
/// (recorded by earlier chunks) and reports `e` only when there are none.
fn partial(out: &mut Fetched, written: usize, e: BrokerError) -> Result<(), BrokerError> {
    out.deliveries.truncate(written);
    if written == 0 {
        return Err(e);
    }
    tracing::error!("consumer: cannot record the rest of a fetch: {e}; it stays in flight");
    Ok(())
}

/// One `MULTI`/`EXEC` of step 2 being built.
struct Chunk {
    at: String,
    hset: redis::Cmd,
    zadd: redis::Cmd,
    tags: usize,
    bytes: usize,
    /// In-flight list -> how many of its messages (from the right) this
    /// chunk read.
    trims: Vec<(String, usize)>,
}

impl Chunk {
    fn new(at: &str) -> Self {
        let mut hset = redis::cmd("HSET");
        hset.arg(UNACKED);
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(UNACKED_INDEX);
        Chunk {
            at: at.to_owned(),
            hset,
            zadd,
            tags: 0,
            bytes: 0,
            trims: Vec::new(),
        }
    }

    /// Counts one more message read off `flight`.
    fn trim(&mut self, flight: &str) {
        match self.trims.last_mut() {
            Some((f, n)) if f == flight => *n += 1,
            _ => self.trims.push((flight.to_owned(), 1)),
        }
    }
}

/// Adds each of `queues` to the binding table of its exchange (and its
/// persistent copy), under its routing key, as kombu's `queue_bind`.
///
/// # Errors
///
/// [`BrokerError`] when Redis fails beyond the link's retries.
pub(crate) async fn bind(link: &Link, queues: &[ConsumedQueue]) -> Result<(), BrokerError> {
    let mut pipe = redis::pipe();
    for q in queues {
        let member = keys::binding_member(&q.routing_key, &q.name);
        pipe.cmd("SADD")
            .arg(keys::binding_key(&q.exchange))
            .arg(&member)
            .ignore();
        pipe.cmd("SADD")
            .arg(keys::binding_permanent_key(&q.exchange))
            .arg(&member)
            .ignore();
    }
    if queues.is_empty() {
        return Ok(());
    }
    write_pipe(link, "declaring the queues", &pipe).await
}

/// Sends `pipe` (its replies ignored) through `link`, again after each
/// reconnection until it went through; `what` names it in the log.
async fn write_pipe(link: &Link, what: &str, pipe: &redis::Pipeline) -> Result<(), BrokerError> {
    link.call_until_done(what, |mut conn| async move {
        pipe.query_async::<()>(&mut conn).await
    })
    .await?
    .map_err(BrokerError::Redis)
}

/// From an unacked entry `[envelope, exchange, routing_key]`: the envelope
/// with `redelivered` set in its headers and delivery info, the exchange,
/// the routing key, and the message priority (0–9, default 0).
fn redelivered(entry: &[u8]) -> Option<(String, String, String, u8)> {
    let parsed: Value = serde_json::from_slice(entry).ok()?;
    let mut parts = match parsed {
        Value::Array(parts) if parts.len() == 3 => parts,
        _ => return None,
    };
    let routing_key = parts.pop()?.as_str()?.to_owned();
    let exchange = parts.pop()?.as_str()?.to_owned();
    let mut envelope = parts.pop()?;
    if let Some(h) = envelope.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".to_owned(), Value::Bool(true));
    }
    let props = envelope.get_mut("properties")?;
    let priority = props
        .get("priority")
        .and_then(crate::protocol::kombu_priority)
        .unwrap_or(0);
    if let Some(info) = props
        .get_mut("delivery_info")
        .and_then(Value::as_object_mut)
    {
        info.insert("redelivered".to_owned(), Value::Bool(true));
    }
    Some((envelope.to_string(), exchange, routing_key, priority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info() {
        let info = "# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\n";
        assert_eq!(server_version(info), Some((6, 0, "6.0.16".to_owned())));
        assert_eq!(server_version("nothing"), None);
    }

    #[test]
    fn takes_are_priority_major_and_rotate_the_queues() {
        let pairs: Vec<Vec<Pair>> = ["a", "b"]
            .iter()
            .map(|q| {
                keys::PRIORITY_STEPS
                    .iter()
                    .map(|s| {
                        let key = keys::queue_key(q, *s);
                        Pair {
                            flight: keys::inflight_key("w@h", &key),
                            key,
                        }
                    })
                    .collect()
            })
            .collect();
        let names = |turn| -> Vec<(usize, String)> {
            take_order(&pairs, turn)
                .into_iter()
                .map(|(q, p)| (q, p.key.clone()))
                .collect()
        };
        let sep = keys::SEP;
        assert_eq!(
            names(0)[..4],
            [
                (0, "a".to_owned()),
                (1, "b".to_owned()),
                (0, format!("a{sep}3")),
                (1, format!("b{sep}3"))
            ]
        );
        assert_eq!(names(1)[..2], [(1, "b".to_owned()), (0, "a".to_owned())]);
        assert_eq!(names(0).len(), 8);
        assert_eq!(
            take_order(&pairs, 0)[2].1.flight,
            format!("greenpool.inflight.w@h{sep}a{sep}3")
        );
    }

    #[test]
    fn unacked_entries_are_kombus() {
        let e = unacked_entry(r#"{"body": ""}"#, r#""celery""#);
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v, serde_json::json!([{"body": ""}, "", "celery"]));
    }

    #[test]
    fn restored_envelope_is_marked_redelivered() {
        let entry = r#"[{"body": "", "headers": {"task": "t"}, "properties": {"priority": 7, "delivery_info": {"exchange": "", "routing_key": "q"}}}, "", "q"]"#;
        let (payload, ex, rk, pri) = redelivered(entry.as_bytes()).unwrap();
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["headers"]["redelivered"], Value::Bool(true));
        assert_eq!(
            v["properties"]["delivery_info"]["redelivered"],
            Value::Bool(true)
        );
        assert_eq!((ex.as_str(), rk.as_str(), pri), ("", "q", 7));
        assert!(redelivered(b"[1, 2]").is_none());
    }
}
