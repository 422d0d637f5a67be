//! Replies: `{node: answer}` LPUSHed on every list bound to the reply
//! exchange under the caller's routing key, with the request's ticket.

use serde_json::{json, Map, Value};

use super::envelope;
use super::message::ReplyTo;
use crate::conn::Link;
use crate::error::BrokerError;

/// The queues bound under `routing_key` among binding-table `members`
/// (`routing_key sep pattern sep queue`).
pub(crate) fn bound_queues(members: &[String], routing_key: &str, sep: &str) -> Vec<String> {
    members
        .iter()
        .filter_map(|m| {
            let mut parts = m.split(sep);
            let rk = parts.next()?;
            let _pattern = parts.next()?;
            let queue = parts.next()?;
            (rk == routing_key).then(|| queue.to_owned())
        })
        .collect()
}

/// Sends `answer` from `hostname` to the caller at `to`. A caller that
/// has gone (no binding left) gets nothing, as with kombu.
pub(crate) async fn send(
    link: &Link,
    to: &ReplyTo,
    ticket: Option<&str>,
    clock: u64,
    hostname: &str,
    answer: Value,
) -> Result<usize, BrokerError> {
    let keys = &link.settings().keys;
    let key = keys.binding_key(&to.exchange);
    let members: Vec<String> = link
        .call_until_done("read reply bindings", |mut conn| {
            let key = key.clone();
            async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await }
        })
        .await?
        .map_err(BrokerError::Redis)?;
    let queues = bound_queues(&members, &to.routing_key, &keys.sep);
    if queues.is_empty() {
        return Ok(0);
    }
    let mut headers = Map::new();
    headers.insert("ticket".into(), json!(ticket));
    headers.insert("clock".into(), json!(clock));
    let mut body = Map::new();
    body.insert(hostname.to_owned(), answer);
    let payload = envelope::encode(
        &Value::Object(body),
        headers,
        &to.exchange,
        &to.routing_key,
        1,
    );
    let mut pipe = redis::pipe();
    for q in &queues {
        // A reply's priority is 0: the list of the step 0 falls in.
        pipe.cmd("LPUSH")
            .arg(keys.queue_key(q, 0))
            .arg(&payload)
            .ignore();
    }
    link.call_until_done("send a control reply", |mut conn| {
        let pipe = pipe.clone();
        async move { pipe.query_async::<()>(&mut conn).await }
    })
    .await?
    .map_err(BrokerError::Redis)?;
    Ok(queues.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bound_list() {
        let m = vec![
            "oid1\x06\x16\x06\x16oid1.reply.celery.pidbox".to_owned(),
            "oid2\x06\x16\x06\x16oid2.reply.celery.pidbox".to_owned(),
            "garbage".to_owned(),
        ];
        assert_eq!(
            bound_queues(&m, "oid2", "\x06\x16"),
            ["oid2.reply.celery.pidbox"]
        );
        assert!(bound_queues(&m, "none", "\x06\x16").is_empty());
    }
}
