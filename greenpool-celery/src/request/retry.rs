//! The envelopes that send a request's own message again: the retry of a
//! task (`retries + 1`, an ETA) and the requeue of a rejected message.
//!
//! Both are [`Publish`]es: a retry goes to the exchange and routing key
//! its delivery came through (as Celery's `Task.retry` sends it), a
//! requeue back to the queue it came from (as kombu restores it).

use std::time::Duration;

use serde_json::{json, Value};

use crate::protocol::{Envelope, Timestamp};
use crate::seconds::duration_from_secs;
use crate::task_error::TaskError;

pub(crate) use crate::broker::Publish;
use crate::broker::Received;

/// The retry of `received`: `retries + 1`, an ETA `countdown` from now, a
/// fresh delivery tag. `Ok(None)` for v1 messages or unreadable ones.
///
/// # Errors
///
/// A `ValueError` when `countdown` is beyond what the clocks can carry.
pub(crate) fn retry_message(
    received: &Received,
    countdown: Duration,
) -> Result<Option<Publish>, TaskError> {
    let countdown = duration_from_secs("retry countdown", countdown.as_secs_f64())
        .map_err(|e| TaskError::value_error(e.to_string()))?;
    let eta = Timestamp::now().checked_add(countdown).ok_or_else(|| {
        TaskError::value_error(format!(
            "retry countdown of {} s is beyond the year 9999",
            countdown.as_secs_f64()
        ))
    })?;
    Ok(received.envelope().and_then(|env| retry_envelope(env, eta)))
}

/// The message `env` sent again with `retries + 1` and `eta`, to the
/// exchange and routing key it was delivered through. The delivery tag
/// and `redelivered` marks are dropped: it is a new message.
fn retry_envelope(mut env: Envelope, eta: Timestamp) -> Option<Publish> {
    let headers = &mut env.headers;
    headers.get("task")?;
    let retries = headers.get("retries").and_then(Value::as_u64).unwrap_or(0);
    headers.insert("retries".to_owned(), json!(retries.saturating_add(1)));
    headers.insert("eta".to_owned(), json!(eta.to_string()));
    headers.remove("redelivered");
    let props = &mut env.properties;
    props.delivery_tag = None;
    let info = std::mem::take(&mut props.delivery_info);
    Some(Publish {
        exchange: info.exchange,
        routing_key: info.routing_key,
        priority: props.priority,
        message: env,
    })
}

/// The message `received` put back on `queue` by a requeueing reject: marked
/// `redelivered`, as kombu's restore marks it, with its delivery tag.
/// `None` for an envelope that cannot be read.
pub(crate) fn requeue_envelope(received: &Received, queue: &str) -> Option<Publish> {
    let mut env = received.envelope()?;
    env.headers
        .insert("redelivered".to_owned(), Value::Bool(true));
    env.properties.delivery_info.redelivered = Some(true);
    let priority = env.properties.priority;
    Some(Publish::to_queue(queue, priority, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeued_message_goes_to_its_queue_marked_redelivered() {
        let raw = br#"{"body": "", "headers": {"task": "t", "id": "1"}, "properties": {"priority": 5, "delivery_tag": "d1", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
        let text = Received::Text(String::from_utf8(raw.to_vec()).unwrap());
        let p = requeue_envelope(&text, "q2").unwrap();
        // The same message held as fields is put back the same way.
        let fields = Received::Fields(Box::new(text.envelope().unwrap()));
        assert_eq!(requeue_envelope(&fields, "q2"), Some(p.clone()));
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("", "q2"));
        assert_eq!(p.priority, Some(5));
        let m = &p.message;
        assert_eq!(m.headers["redelivered"], json!(true));
        assert_eq!(m.properties.delivery_info.redelivered, Some(true));
        assert_eq!(
            m.properties.delivery_tag.as_deref(),
            Some("d1"),
            "the tag is kept"
        );
        let unreadable = Received::Text("not json".to_owned());
        assert!(requeue_envelope(&unreadable, "q").is_none());
    }
}
