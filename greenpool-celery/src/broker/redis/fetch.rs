//! The fetch: the two steps (take, then record) that move messages from
//! their queues into kombu's `unacked` bookkeeping.
//!
//! # The two steps, and what window remains
//!
//! kombu takes one message per BRPOP and records it in `unacked` in a
//! second round trip, so a worker that dies (or a connection that breaks)
//! between the two loses that message. Here a fetch has two steps, and a
//! message is at every instant in its queue, in an in-flight list of the
//! worker that took it, or in `unacked`:
//!
//! 1. **Take**: one short script ([`TAKE`]) moves up to the free prefetch
//!    budget from the queue keys into this worker's in-flight lists (one
//!    per queue key, named after the worker: [`inflight_key`]), in the
//!    same round trip as the `LRANGE`s that read them back. Redis copies
//!    the messages itself (`SORT … STORE`, `LTRIM`): the script makes no
//!    string per message, which is what made the earlier one-script fetch
//!    (pop and record together) four times as expensive for Redis.
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
//!   ([`RETURN`], atomic).
//!
//! The window that remains is a delay, not a loss: a dead worker's
//! in-flight messages wait until its liveness key expires and a sweep
//! runs (at most [`LIVENESS_TTL`] plus the restore interval), or until it
//! starts again. A worker that is alive but cannot reach Redis for longer
//! than [`LIVENESS_TTL`] may have its in-flight messages returned while it
//! still records them: those run twice (a duplicate, as with kombu's
//! visibility timeout), none is lost. Two workers started with the same
//! name share their in-flight lists; each returns them at start.
//!
//! [`TAKE`]: super::scripts::TAKE
//! [`RETURN`]: super::scripts::RETURN
//! [`inflight_key`]: crate::config::RedisKeys::inflight_key
//! [`LIVENESS_TTL`]: super::liveness::LIVENESS_TTL
//! [`LIVENESS_REFRESH`]: super::liveness::LIVENESS_REFRESH

use std::sync::atomic::Ordering;

use super::{now_secs, write_pipe, Layout, Pair, RedisBroker};
use crate::broker::{Delivery, Fetched, Oversized};
use crate::config::QueueOrder;
use crate::error::BrokerError;

/// Most bytes of unacked entries written by one `MULTI`/`EXEC` of step 2
/// (a larger fetch is recorded in several, each atomic), well under
/// Redis' `client-query-buffer-limit` (1 GiB by default).
const RECORD_CHUNK_BYTES: usize = 64 << 20;

/// Set to `1` (by fault tests only), the worker stops for good after
/// step 1 of its first fetch that took something, with a log line
/// `halted between the take and the record`, so that a test can kill it
/// there. Read only in builds with the `fault-injection` feature (the
/// test builds of `greenpool-cli`); other builds never look at it.
#[cfg(feature = "fault-injection")]
pub(super) const HALT_AFTER_TAKE_ENV: &str = "GREENPOOL_FAULT_HALT_AFTER_TAKE";

/// The keys a fetch takes from, priority-major (every queue's plain key
/// first, then every queue's next step's key, and so on: kombu's order),
/// the queues in `rank`'s order rotated by `turn`; each with the index of
/// its queue.
fn take_order<'a>(pairs: &'a [Vec<Pair>], rank: &[usize], turn: usize) -> Vec<(usize, &'a Pair)> {
    let n = rank.len();
    let steps = pairs.iter().map(Vec::len).max().unwrap_or(0);
    let mut order = Vec::with_capacity(n.saturating_mul(steps));
    for step in 0..steps {
        for i in 0..n {
            // Both terms are below n, so the sum cannot overflow.
            let Some(&q) = rank.get((turn % n + i) % n) else {
                continue;
            };
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
    /// The unacked hash and index keys.
    unacked: String,
    unacked_index: String,
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
    fn new(at: &str, unacked: &str, unacked_index: &str) -> Self {
        let mut hset = redis::cmd("HSET");
        hset.arg(unacked);
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(unacked_index);
        Chunk {
            unacked: unacked.to_owned(),
            unacked_index: unacked_index.to_owned(),
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

impl RedisBroker {
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
        // kombu's round-robin cycle moves the queue it last took from to
        // the end; `sorted` and `priority` keep their order, so the first
        // queue is emptied before the next is read.
        let turn = match self.queue_order {
            QueueOrder::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let order = take_order(&layout.pairs, &layout.rank, turn);
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
        #[cfg(feature = "fault-injection")]
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
        let keys = self.keys();
        let mut chunk = Chunk::new(&at, &keys.unacked(), &keys.unacked_index());
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
                    let entry = unacked_entry(&d.message.text(), json);
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
        let next = Chunk::new(&chunk.at, &chunk.unacked, &chunk.unacked_index);
        let done = std::mem::replace(chunk, next);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisKeys;
    use serde_json::Value;

    fn pairs(keys: &RedisKeys, queues: &[&str]) -> Vec<Vec<Pair>> {
        queues
            .iter()
            .map(|q| {
                keys.priority_steps
                    .iter()
                    .map(|s| {
                        let key = keys.step_key(q, *s);
                        Pair {
                            flight: keys.inflight_key("w@h", &key),
                            key,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn takes_are_priority_major_and_rotate_the_queues() {
        let pairs = pairs(&RedisKeys::default(), &["a", "b"]);
        let rank = [0, 1];
        let names = |turn| -> Vec<(usize, String)> {
            take_order(&pairs, &rank, turn)
                .into_iter()
                .map(|(q, p)| (q, p.key.clone()))
                .collect()
        };
        let sep = crate::config::DEFAULT_SEP;
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
            take_order(&pairs, &rank, 0)[2].1.flight,
            format!("greenpool.inflight.w@h{sep}a{sep}3")
        );
        assert_eq!(names(usize::MAX).len(), 8);
    }

    #[test]
    fn a_fixed_rank_reads_its_first_queue_first_at_every_step() {
        let keys = crate::TransportOptions::parse(
            r#"{"global_keyprefix": "gp:", "priority_steps": [0, 5]}"#,
            "broker",
        )
        .unwrap()
        .keys;
        let pairs = pairs(&keys, &["b", "a"]);
        let order: Vec<&str> = take_order(&pairs, &[1, 0], 0)
            .into_iter()
            .map(|(_, p)| p.key.as_str())
            .collect();
        assert_eq!(order, ["gp:a", "gp:b", "gp:a\x06\x165", "gp:b\x06\x165"]);
    }

    #[test]
    fn unacked_entries_are_kombus() {
        let e = unacked_entry(r#"{"body": ""}"#, r#""celery""#);
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v, serde_json::json!([{"body": ""}, "", "celery"]));
    }
}
