//! Bindings: kombu's exchange binding tables in Redis, written when a
//! worker declares its queues and read to find where a restored message
//! goes.

use super::{write_pipe, RedisBroker};
use crate::broker::keys;
use crate::broker::ConsumedQueue;
use crate::conn::Link;
use crate::error::BrokerError;

impl RedisBroker {
    /// Adds each queue to the binding table of its exchange (as Celery
    /// declares `Queue(name, Exchange(name), routing_key=name)`), so that
    /// producers publishing to the exchange reach our lists.
    pub(crate) async fn declare(&self) -> Result<(), BrokerError> {
        self.stats.round_trip();
        bind(&self.link, &self.queues.snapshot()).await
    }

    /// The queues bound to `exchange` under `routing_key`; the default
    /// exchange routes by queue name.
    pub(super) async fn lookup(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Vec<String>, BrokerError> {
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
