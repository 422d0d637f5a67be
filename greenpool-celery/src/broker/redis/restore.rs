//! Restores: an unacked message put back on its queue (a requeueing
//! reject, or the visibility-timeout sweep that gives back what was
//! delivered too long ago, by any worker), with `redelivered` set.

use serde_json::Value;

use super::{now_secs, RedisBroker};
use crate::error::BrokerError;

impl RedisBroker {
    /// Puts a delivered message back: RPUSH to the front of the queue it
    /// was fetched from (`leftmost = false`, a restore) or LPUSH to the
    /// back (a requeueing reject), with `redelivered` set, and removes it
    /// from `unacked`. Returns false if it was no longer unacked.
    pub(crate) async fn restore(&self, tag: &str, leftmost: bool) -> Result<bool, BrokerError> {
        let (unacked, unacked_index) = (self.keys().unacked(), self.keys().unacked_index());
        let (unacked, unacked_index) = (unacked.as_str(), unacked_index.as_str());
        self.stats.round_trip();
        let entry: Option<Vec<u8>> = self
            .link
            .call_until_done("reading an unacked message", |mut conn| async move {
                redis::cmd("HGET")
                    .arg(unacked)
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
                        .arg(unacked_index)
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
            .map(|q| self.keys().queue_key(q, priority))
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
                        .arg(unacked)
                        .arg(unacked_index)
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

    /// The visibility-timeout sweep: under the `unacked_mutex` lock, puts
    /// back every message delivered more than `visibility_timeout` seconds
    /// ago, by any worker. Returns how many came back; 0 when another
    /// worker holds the lock.
    ///
    /// The lock's token is the worker's name, so that a lock of its own
    /// left on a server (a release lost to a failover) is taken over.
    pub(crate) async fn restore_visible(
        &self,
        visibility_timeout: f64,
    ) -> Result<usize, BrokerError> {
        // The lock's token is this worker's name: a lock this worker
        // left behind (its release lost in a failover, or the worker
        // killed and started again under the same name) is taken over
        // at once instead of stopping every sweep for its lifetime.
        let token = self.worker.as_str();
        let (mutex, unacked_index) = (self.keys().unacked_mutex(), self.keys().unacked_index());
        let (mutex, unacked_index) = (mutex.as_str(), unacked_index.as_str());
        self.stats.round_trip();
        let holder: Option<String> = self
            .link
            .call(|mut conn| async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(mutex)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(300_000)
                    .query_async(&mut conn)
                    .await?;
                if set.is_some() {
                    return Ok(Some(token.to_owned()));
                }
                redis::cmd("GET").arg(mutex).query_async(&mut conn).await
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        if holder.as_deref() != Some(token) {
            return Ok(0);
        }
        let ceiling = now_secs() - visibility_timeout;
        let result = async {
            self.stats.round_trip();
            let stale: Vec<String> = self
                .link
                .call(|mut conn| async move {
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(unacked_index)
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
        // The release goes through reconnections: after a failover the
        // lock may live on the new master (replicated there), where only
        // this token can lift it; left, it would stop every worker's
        // sweep for the lock's whole lifetime.
        self.stats.round_trip();
        let _ = self
            .link
            .call_until_done("releasing the unacked_mutex lock", |mut conn| {
                let sha = &self.scripts.unlock;
                async move {
                    redis::cmd("EVALSHA")
                        .arg(sha)
                        .arg(1)
                        .arg(mutex)
                        .arg(token)
                        .query_async::<i64>(&mut conn)
                        .await
                }
            })
            .await;
        result
    }
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
    use serde_json::Value;

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
