//! kombu's Redis transport, consumer side: fetching with ack emulation,
//! bindings, restores and the visibility-timeout sweep.
//!
//! # The fetch, and what window remains
//!
//! kombu takes one message per BRPOP and records it in `unacked` in a
//! second round trip, so a worker that dies (or a connection that breaks)
//! between the two loses that message. Here one Lua script
//! ([`FETCH`](crate::scripts::FETCH)) pops up to the free prefetch budget
//! and records every message in `unacked` / `unacked_index` in the same
//! atomic step, on every server version (`RPOP key count` from Redis 6.2,
//! one `RPOP` per message before that). Its reply is read as bytes: a
//! message that is not UTF-8 or not JSON is one bad message (logged once
//! with its reason, then acked or, without a delivery tag, simply gone),
//! never a lost batch. A message over the size limit is removed inside
//! Redis and reported by size, so the worker never reads it.
//!
//! There is no blocking pop: a blocking pop hands a message to the socket
//! before it is recorded, so a reply lost to a cut or a stall would lose
//! it. While every queue is empty the consumer polls the script, sleeping
//! 1 ms doubling to 100 ms between tries (an idle worker costs Redis ten
//! short scripts a second; the first message after a pause waits at most
//! 100 ms).
//!
//! The window that remains: when the reply of a fetch is lost (the
//! connection breaks or stalls after Redis ran the script), its messages
//! are in `unacked` but the worker never saw them. None is lost: the
//! visibility-timeout sweep (by this or any worker) puts them back on
//! their queue, after `visibility_timeout`. Messages without a delivery
//! tag in such a reply are gone, as they would be anyway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::keys::{self, UNACKED, UNACKED_INDEX, UNACKED_MUTEX};
use super::{ActiveQueues, ConsumedQueue, Fetched};
use crate::conn::Link;
use crate::error::BrokerError;
use crate::scripts::Scripts;
use crate::stats::RedisStats;

/// The oldest Redis the worker runs on (multi-field `HSET` in the scripts).
const MIN_VERSION: (u32, u32) = (4, 0);

/// A connection to the broker for one worker.
#[derive(Debug)]
pub(crate) struct RedisBroker {
    link: Arc<Link>,
    scripts: Scripts,
    /// The queues consumed, changed at run time by `add_consumer` and
    /// `cancel_consumer`; each fetch reads the current set.
    queues: Arc<ActiveQueues>,
    /// Rotation of the queue order, as kombu's round-robin cycle.
    turn: AtomicUsize,
    /// The server has `RPOP key count` (Redis 6.2+).
    counted_pop: bool,
    max_message_size: usize,
    stats: Arc<RedisStats>,
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

impl RedisBroker {
    /// Checks the server version and loads the scripts on `link`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Version`] for a server older than Redis 4.0, or any
    /// Redis error.
    pub(crate) async fn new(
        link: Arc<Link>,
        queues: Arc<ActiveQueues>,
        legacy_fetch: bool,
        max_message_size: usize,
        stats: Arc<RedisStats>,
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
        Ok(RedisBroker {
            counted_pop: (major, minor) >= (6, 2) && !legacy_fetch,
            link,
            scripts,
            queues,
            turn: AtomicUsize::new(0),
            max_message_size,
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

    /// Takes up to `max` messages without blocking, in kombu's key order
    /// (priority-major, queues rotated round-robin), each recorded in the
    /// unacked hash in the same atomic step.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Redis`] when the call fails; the caller recovers the
    /// link before it tries again.
    pub(crate) async fn fetch(&self, max: usize, stamp: f64) -> Result<Fetched, BrokerError> {
        let queues = self.queues.snapshot();
        if queues.is_empty() {
            // Every queue was cancelled: nothing to read until one is added.
            return Ok(Fetched::default());
        }
        let n = queues.len();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<&ConsumedQueue> = queues.iter().collect();
        order.rotate_left(turn);
        let names: Vec<String> = order.iter().map(|q| q.name.clone()).collect();
        let keys = keys::fetch_keys(&names);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.scripts.fetch)
            .arg(2 + keys.len())
            .arg(UNACKED)
            .arg(UNACKED_INDEX);
        for (key, _) in &keys {
            cmd.arg(key);
        }
        cmd.arg(max.max(1))
            .arg(format!("{stamp:.6}"))
            .arg(self.max_message_size)
            .arg(if self.counted_pop { "1" } else { "0" });
        for &(_, q) in &keys {
            cmd.arg(&order[q].json);
        }
        self.stats.round_trip();
        let reply: Vec<redis::Value> = self
            .link
            .call(|mut conn| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut conn).await }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        let by_key: Vec<String> = keys.into_iter().map(|(_, q)| names[q].clone()).collect();
        let fetched = Fetched::from_reply(reply, &by_key);
        self.stats
            .add_fetched((fetched.deliveries.len() + fetched.oversized.len()) as u64);
        Ok(fetched)
    }

    /// A fresh delivery time for [`RedisBroker::fetch`]: the fetch
    /// records its messages under it in `unacked_index`, which is how
    /// [`RedisBroker::reclaim`] finds them when the reply is lost.
    pub(crate) fn stamp() -> f64 {
        now_secs()
    }

    /// The messages a fetch stamped `stamp` recorded, when its reply was
    /// lost: read back from `unacked` (the script may also not have run;
    /// then there are none).
    pub(crate) async fn reclaim(&self, stamp: f64) -> Result<Fetched, BrokerError> {
        let at = format!("{stamp:.6}");
        self.stats.round_trip();
        let tags: Vec<String> = self
            .link
            .call_until_done("reading back a fetch", |mut conn| {
                let at = &at;
                async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(UNACKED_INDEX)
                        .arg(at)
                        .arg(at)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        let mut out = Fetched::default();
        if tags.is_empty() {
            return Ok(out);
        }
        let queues = self.queues.snapshot();
        self.stats.round_trip();
        let entries: Vec<Option<Vec<u8>>> = self
            .link
            .call_until_done("reading back a fetch", |mut conn| {
                let tags = &tags;
                async move {
                    redis::cmd("HMGET")
                        .arg(UNACKED)
                        .arg(tags)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        for (tag, entry) in tags.into_iter().zip(entries) {
            let Some(mut entry) = entry else { continue };
            // Our own entries: `[` raw `, "", ` queue-as-JSON `]`.
            let found = queues.iter().find(|q| {
                let suffix = format!(", \"\", {}]", q.json);
                entry.first() == Some(&b'[') && entry.ends_with(suffix.as_bytes())
            });
            let Some(ConsumedQueue {
                name: queue, json, ..
            }) = found
            else {
                tracing::warn!("message {tag} is not one this worker fetched; the visibility timeout will restore it");
                continue;
            };
            let cut = entry.len() - json.len() - 7;
            entry.truncate(cut);
            entry.remove(0);
            out.deliveries
                .push(super::Delivery::read(queue.clone(), entry, tag));
        }
        tracing::warn!(
            "consumer: read back {} message(s) of a fetch whose reply was lost",
            out.deliveries.len()
        );
        Ok(out)
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
    link.call_until_done("declaring the queues", |mut conn| {
        let pipe = &pipe;
        async move { pipe.query_async::<()>(&mut conn).await }
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
