//! kombu's Redis transport, consumer side: fetching with ack emulation,
//! bindings, restores and the visibility-timeout sweep.
//!
//! kombu takes one message per BRPOP and records it in `unacked` in a
//! second round trip. Here a Lua script pops up to the free prefetch
//! budget and records them in the same atomic step; BRPOP (kombu's own
//! order of keys, one-second timeout) is used only to sleep while every
//! queue is empty.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use serde_json::Value;

use super::keys::{self, UNACKED, UNACKED_INDEX, UNACKED_MUTEX};
use crate::error::{BrokerError, ProtocolError};
use crate::protocol::WireEnvelope;
use crate::scripts::Scripts;
use crate::stats::RedisStats;

/// One message taken off a queue.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The queue it came from.
    pub(crate) queue: String,
    /// The envelope text as the producer pushed it.
    pub(crate) raw: String,
    /// Its delivery tag; `None` when the envelope is unreadable (then it
    /// was not recorded in `unacked` and is only to be logged and dropped).
    pub(crate) tag: Option<String>,
    /// The envelope, parsed once here.
    pub(crate) parsed: Result<WireEnvelope, ProtocolError>,
}

impl Delivery {
    /// Parses a popped envelope and takes its delivery tag.
    fn read(queue: String, raw: String) -> Self {
        let parsed = WireEnvelope::parse(raw.as_bytes());
        let tag = parsed
            .as_ref()
            .ok()
            .and_then(|e| e.properties.delivery_tag.clone())
            .filter(|t| !t.is_empty());
        Delivery {
            queue,
            raw,
            tag,
            parsed,
        }
    }

    /// The tag and the `unacked` hash value (`[envelope, exchange,
    /// routing_key]`, as kombu writes it), when the envelope is readable.
    fn unacked_entry(&self) -> Option<(&str, String)> {
        let (Some(tag), Ok(env)) = (&self.tag, &self.parsed) else {
            return None;
        };
        let info = &env.properties.delivery_info;
        let entry = format!(
            "[{}, {}, {}]",
            self.raw,
            Value::String(info.exchange.clone()),
            Value::String(info.routing_key.clone())
        );
        Some((tag, entry))
    }
}

/// A connection to the broker for one worker.
#[derive(Debug)]
pub(crate) struct RedisBroker {
    conn: MultiplexedConnection,
    /// Separate connection for BRPOP, which holds its connection while it
    /// blocks.
    blocking: MultiplexedConnection,
    scripts: Scripts,
    queues: Vec<String>,
    /// Rotation of the queue order, as kombu's round-robin cycle.
    turn: AtomicUsize,
    /// The server has LMPOP/BLMPOP (Redis 7+).
    lmpop: bool,
    stats: Arc<RedisStats>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RedisBroker {
    /// Connects and loads the scripts.
    pub(crate) async fn connect(
        url: &str,
        queues: Vec<String>,
        legacy_fetch: bool,
        stats: Arc<RedisStats>,
    ) -> Result<Self, BrokerError> {
        let (_, mut conn) = crate::connect::connect(url).await?;
        let (_, blocking) = crate::connect::connect(url).await?;
        let scripts = Scripts::load(&mut conn).await.map_err(BrokerError::Redis)?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::Redis)?;
        let major = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.trim().parse::<u32>().ok())
            .unwrap_or(0);
        Ok(RedisBroker {
            lmpop: major >= 7 && !legacy_fetch,
            conn,
            blocking,
            scripts,
            queues,
            turn: AtomicUsize::new(0),
            stats,
        })
    }

    /// A connection for the ack batcher.
    pub(crate) fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// The loaded scripts.
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Adds each queue to the binding table of its same-named exchange (as
    /// Celery declares `Queue(name, Exchange(name), routing_key=name)`), so
    /// that producers publishing to the exchange reach our lists.
    pub(crate) async fn declare(&self) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        for q in &self.queues {
            let member = keys::binding_member(q, q);
            pipe.cmd("SADD")
                .arg(keys::binding_key(q))
                .arg(&member)
                .ignore();
            pipe.cmd("SADD")
                .arg(keys::binding_permanent_key(q))
                .arg(&member)
                .ignore();
        }
        self.stats.round_trip();
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(BrokerError::Redis)
    }

    fn ordered_keys(&self) -> Vec<String> {
        let n = self.queues.len().max(1);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut qs = self.queues.clone();
        qs.rotate_left(turn);
        keys::brpop_keys(&qs)
    }

    /// Takes up to `max` messages without blocking, in kombu's key order,
    /// each recorded in the unacked hash before it is handed out.
    pub(crate) async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        if self.lmpop {
            self.pop_many(max, None).await
        } else {
            self.fetch_lua(max).await
        }
    }

    /// Blocks up to `timeout_secs` for messages (BLMPOP, or BRPOP on
    /// servers older than 7.0, as kombu does).
    pub(crate) async fn wait(
        &self,
        max: usize,
        timeout_secs: u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if self.lmpop {
            self.pop_many(max, Some(timeout_secs)).await
        } else {
            Ok(self.wait_one(timeout_secs).await?.into_iter().collect())
        }
    }

    /// LMPOP/BLMPOP (Redis 7): up to `max` messages from the first
    /// non-empty key in priority-major order, then one pipelined
    /// ZADD + HSET for all of them. As in kombu, a worker that dies
    /// between the pop and the record loses those messages.
    async fn pop_many(&self, max: usize, block: Option<u64>) -> Result<Vec<Delivery>, BrokerError> {
        let keys = self.ordered_keys();
        let mut cmd = match block {
            Some(t) => {
                let mut c = redis::cmd("BLMPOP");
                c.arg(t);
                c
            }
            None => redis::cmd("LMPOP"),
        };
        cmd.arg(keys.len())
            .arg(&keys)
            .arg("RIGHT")
            .arg("COUNT")
            .arg(max.max(1));
        let mut conn = if block.is_some() {
            self.blocking.clone()
        } else {
            self.conn.clone()
        };
        self.stats.round_trip();
        let popped: Option<(String, Vec<String>)> = cmd
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::Redis)?;
        let Some((key, raws)) = popped else {
            return Ok(Vec::new());
        };
        self.stats.add_fetched(raws.len() as u64);
        let queue = keys::queue_of_key(&key).to_owned();
        let when = now_secs();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(UNACKED_INDEX);
        let mut hset = redis::cmd("HSET");
        hset.arg(UNACKED);
        let mut recorded = 0;
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let delivery = Delivery::read(queue.clone(), raw);
            if let Some((tag, entry)) = delivery.unacked_entry() {
                zadd.arg(when).arg(tag);
                hset.arg(tag).arg(entry);
                recorded += 1;
            }
            out.push(delivery);
        }
        if recorded > 0 {
            pipe.add_command(zadd).ignore().add_command(hset).ignore();
            self.stats.round_trip();
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(BrokerError::Redis)?;
        }
        Ok(out)
    }

    /// The Lua fetch, for servers without LMPOP.
    async fn fetch_lua(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let keys = self.ordered_keys();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.scripts.fetch)
            .arg(keys.len() + 2)
            .arg(UNACKED)
            .arg(UNACKED_INDEX)
            .arg(&keys)
            .arg(max)
            .arg(format!("{:.6}", now_secs()));
        self.stats.round_trip();
        let mut conn = self.conn.clone();
        let flat: Vec<String> = match cmd.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis lost its scripts (restart, SCRIPT FLUSH); the digests
                // stay the same once they are loaded again.
                Scripts::load(&mut conn).await.map_err(BrokerError::Redis)?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(BrokerError::Redis(e)),
        };
        let mut out = Vec::with_capacity(flat.len() / 3);
        let mut it = flat.into_iter();
        while let (Some(key), Some(raw), Some(tag)) = (it.next(), it.next(), it.next()) {
            let parsed = WireEnvelope::parse(raw.as_bytes());
            out.push(Delivery {
                queue: keys::queue_of_key(&key).to_owned(),
                raw,
                tag: (!tag.is_empty()).then_some(tag),
                parsed,
            });
        }
        self.stats.add_fetched(out.len() as u64);
        Ok(out)
    }

    /// Blocks up to `timeout_secs` on BRPOP for one message and records it
    /// in the unacked hash, as kombu does.
    async fn wait_one(&self, timeout_secs: u64) -> Result<Option<Delivery>, BrokerError> {
        let keys = self.ordered_keys();
        self.stats.round_trip();
        let popped: Option<(String, String)> = redis::cmd("BRPOP")
            .arg(&keys)
            .arg(timeout_secs)
            .query_async(&mut self.blocking.clone())
            .await
            .map_err(BrokerError::Redis)?;
        let Some((key, raw)) = popped else {
            return Ok(None);
        };
        self.stats.add_fetched(1);
        let delivery = Delivery::read(keys::queue_of_key(&key).to_owned(), raw);
        if let Some((tag, entry)) = delivery.unacked_entry() {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("ZADD")
                .arg(UNACKED_INDEX)
                .arg(now_secs())
                .arg(tag)
                .ignore()
                .cmd("HSET")
                .arg(UNACKED)
                .arg(tag)
                .arg(entry)
                .ignore();
            self.stats.round_trip();
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(BrokerError::Redis)?;
        }
        Ok(Some(delivery))
    }

    /// Puts a delivered message back: RPUSH to the front of its queue
    /// (`leftmost = false`, a restore) or LPUSH to the back (a requeueing
    /// reject), with `redelivered` set, and removes it from `unacked`.
    /// Returns false if it was no longer unacked.
    pub(crate) async fn restore(&self, tag: &str, leftmost: bool) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        self.stats.round_trip();
        let entry: Option<String> = redis::cmd("HGET")
            .arg(UNACKED)
            .arg(tag)
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::Redis)?;
        let Some(entry) = entry else {
            let _: redis::RedisResult<()> = redis::cmd("ZREM")
                .arg(UNACKED_INDEX)
                .arg(tag)
                .query_async(&mut conn)
                .await;
            return Ok(false);
        };
        let (payload, exchange, routing_key, priority) = match redelivered(&entry) {
            Some(x) => x,
            None => {
                tracing::error!("cannot restore message {tag}: unreadable unacked entry");
                return Ok(false);
            }
        };
        let mut queues = self.lookup(&mut conn, &exchange, &routing_key).await?;
        if queues.is_empty() {
            queues.push(routing_key);
        }
        let dests: Vec<String> = queues
            .iter()
            .map(|q| keys::queue_key(q, priority))
            .collect();
        self.stats.round_trip();
        let restored: i64 = redis::cmd("EVALSHA")
            .arg(&self.scripts.restore)
            .arg(dests.len() + 2)
            .arg(UNACKED)
            .arg(UNACKED_INDEX)
            .arg(&dests)
            .arg(tag)
            .arg(payload)
            .arg(if leftmost { "1" } else { "0" })
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::Redis)?;
        Ok(restored == 1)
    }

    /// The queues bound to `exchange` under `routing_key`; the default
    /// exchange routes by queue name.
    async fn lookup(
        &self,
        conn: &mut MultiplexedConnection,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        self.stats.round_trip();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::binding_key(exchange))
            .query_async(conn)
            .await
            .map_err(BrokerError::Redis)?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let mut parts = m.split(keys::SEP);
                let rk = parts.next()?;
                let _pattern = parts.next()?;
                let queue = parts.next()?;
                (rk == routing_key).then(|| queue.to_owned())
            })
            .collect())
    }

    /// The visibility-timeout sweep: under the `unacked_mutex` lock, puts
    /// back every message delivered more than `visibility_timeout` seconds
    /// ago, by any worker. Returns how many came back; 0 when another
    /// worker holds the lock.
    pub(crate) async fn restore_visible(
        &self,
        visibility_timeout: f64,
    ) -> Result<usize, BrokerError> {
        let mut conn = self.conn.clone();
        let token = crate::uuid::uuid4();
        self.stats.round_trip();
        let locked: Option<String> = redis::cmd("SET")
            .arg(UNACKED_MUTEX)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(300_000)
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::Redis)?;
        if locked.is_none() {
            return Ok(0);
        }
        let ceiling = now_secs() - visibility_timeout;
        let result = async {
            self.stats.round_trip();
            let stale: Vec<String> = redis::cmd("ZRANGE")
                .arg(UNACKED_INDEX)
                .arg(format!("{ceiling:.6}"))
                .arg(0)
                .arg("BYSCORE")
                .arg("REV")
                .query_async(&mut conn)
                .await
                .map_err(BrokerError::Redis)?;
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
        let _: redis::RedisResult<i64> = redis::cmd("EVALSHA")
            .arg(&self.scripts.unlock)
            .arg(1)
            .arg(UNACKED_MUTEX)
            .arg(&token)
            .query_async(&mut conn)
            .await;
        result
    }
}

/// From an unacked entry `[envelope, exchange, routing_key]`: the envelope
/// with `redelivered` set in its headers and delivery info, the exchange,
/// the routing key, and the message priority (0–9, default 0).
fn redelivered(entry: &str) -> Option<(String, String, String, u8)> {
    let parsed: Value = serde_json::from_str(entry).ok()?;
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
        .and_then(Value::as_f64)
        .map_or(0, |p| p.clamp(0.0, 9.0) as u8);
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
    fn restored_envelope_is_marked_redelivered() {
        let entry = r#"[{"body": "", "headers": {"task": "t"}, "properties": {"priority": 7, "delivery_info": {"exchange": "", "routing_key": "q"}}}, "", "q"]"#;
        let (payload, ex, rk, pri) = redelivered(entry).unwrap();
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["headers"]["redelivered"], Value::Bool(true));
        assert_eq!(
            v["properties"]["delivery_info"]["redelivered"],
            Value::Bool(true)
        );
        assert_eq!((ex.as_str(), rk.as_str(), pri), ("", "q", 7));
        assert!(redelivered("[1, 2]").is_none());
    }
}
