//! Bindings: kombu's exchange binding tables in Redis, written when a
//! worker declares its queues and read to find where a restored message
//! or a follow-up goes.
//!
//! kombu routes a publish to a non-default exchange through the table
//! `_kombu.binding.<exchange>`, a set of `routing_key SEP pattern SEP
//! queue` members: a direct exchange (kombu's type for any exchange it
//! was not told about) delivers to every queue bound under the message's
//! routing key; a topic exchange (its members carry a pattern) to every
//! queue whose binding key matches it. The default exchange `""` routes
//! to the queue named by the routing key.

use super::{write_pipe, RedisBroker};
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
                    .arg(self.keys().binding_key(exchange))
                    .query_async(&mut conn)
                    .await
            })
            .await?
            .map_err(BrokerError::Redis)?;
        let mut out = route(&members, routing_key, &self.keys().sep);
        if out.is_empty() {
            out.push(routing_key.to_owned());
        }
        Ok(out)
    }
}

/// The queues of binding table `members` that receive a message with
/// `routing_key`, each once, in a stable order (`sep` separates a
/// member's parts). A table whose members
/// carry a pattern is a topic exchange's: binding keys match by AMQP's
/// topic rules (`*` one word, `#` zero or more); otherwise a direct
/// exchange's: binding keys match when equal. Unreadable members are
/// skipped.
pub(crate) fn route<M: AsRef<[u8]>>(members: &[M], routing_key: &str, sep: &str) -> Vec<String> {
    let parsed: Vec<(&str, &str, &str)> = members
        .iter()
        .filter_map(|m| {
            let m = std::str::from_utf8(m.as_ref()).ok()?;
            let mut parts = m.split(sep);
            let rk = parts.next()?;
            let pattern = parts.next()?;
            let queue = parts.next()?;
            Some((rk, pattern, queue))
        })
        .collect();
    let topic = parsed.iter().any(|(_, pattern, _)| !pattern.is_empty());
    let mut out: Vec<String> = parsed
        .into_iter()
        .filter(|(rk, _, queue)| {
            !queue.is_empty()
                && if topic {
                    topic_matches(rk, routing_key)
                } else {
                    *rk == routing_key
                }
        })
        .map(|(_, _, queue)| queue.to_owned())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether topic binding key `binding` matches `routing_key`, word by
/// word (words split on `.`).
fn topic_matches(binding: &str, routing_key: &str) -> bool {
    fn go(b: &[&str], k: &[&str]) -> bool {
        match b.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, k.get(i..).unwrap_or_default())),
            Some((w, rest)) => match k.split_first() {
                Some((kw, krest)) => (*w == "*" || w == kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let b: Vec<&str> = binding.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&b, &k)
}

/// Adds each of `queues` to the binding table of its exchange (and its
/// persistent copy), under its routing key, as kombu's `queue_bind`.
///
/// # Errors
///
/// [`BrokerError`] when Redis fails beyond the link's retries.
pub(crate) async fn bind(link: &Link, queues: &[ConsumedQueue]) -> Result<(), BrokerError> {
    let keys = &link.settings().keys;
    let mut pipe = redis::pipe();
    for q in queues {
        let member = keys.binding_member(&q.routing_key, &q.name);
        pipe.cmd("SADD")
            .arg(keys.binding_key(&q.exchange))
            .arg(&member)
            .ignore();
        pipe.cmd("SADD")
            .arg(keys.binding_permanent_key(&q.exchange))
            .arg(&member)
            .ignore();
    }
    if queues.is_empty() {
        return Ok(());
    }
    write_pipe(link, "declaring the queues", &pipe).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEP: &str = crate::config::DEFAULT_SEP;

    fn member(rk: &str, pattern: &str, queue: &str) -> String {
        format!("{rk}{SEP}{pattern}{SEP}{queue}")
    }

    fn route_(table: &[String], rk: &str) -> Vec<String> {
        route(table, rk, SEP)
    }

    #[test]
    fn direct_tables_route_by_equal_keys_to_every_bound_queue() {
        let table = [
            member("rk2", "", "q2"),
            member("rk2", "", "q2copy"),
            member("rk2", "", "q2"),
            member("other", "", "q3"),
            "garbage".to_owned(),
        ];
        assert_eq!(route_(&table, "rk2"), ["q2", "q2copy"]);
        assert_eq!(route_(&table, "other"), ["q3"]);
        assert!(route_(&table, "nothing").is_empty());
        assert!(route::<&[u8]>(&[], "rk2", SEP).is_empty());
    }

    #[test]
    fn topic_tables_match_words() {
        let table = [
            member("a.*", "^a\\..*?[^\\.]$", "one"),
            member("a.#", "^a\\..*?$", "any"),
            member("#.z", "^.*?\\.z$", "tail"),
        ];
        assert_eq!(route_(&table, "a.b"), ["any", "one"]);
        assert_eq!(route_(&table, "a.b.c"), ["any"]);
        assert_eq!(route_(&table, "a"), ["any"]);
        assert_eq!(route_(&table, "x.y.z"), ["tail"]);
        assert!(route_(&table, "b.c").is_empty());
    }
}
