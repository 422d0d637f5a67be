//! The envelopes that send a request's own message again: the retry of a
//! task (`retries + 1`, an ETA) and the requeue of a rejected message.
//!
//! Both are [`Publish`]es: a retry goes to the exchange and routing key
//! its delivery came through (as Celery's `Task.retry` sends it), a
//! requeue back to the queue it came from (as kombu restores it).

use std::time::Duration;

use serde_json::{json, Value};

use crate::protocol::{kombu_priority, Timestamp};
use crate::seconds::duration_from_secs;
use crate::task_error::TaskError;

pub(crate) use crate::broker::Publish;

/// The retry of `raw`: `retries + 1`, an ETA `countdown` from now, a
/// fresh delivery tag. `Ok(None)` for v1 messages or unreadable ones.
///
/// # Errors
///
/// A `ValueError` when `countdown` is beyond what the clocks can carry.
pub(crate) fn retry_message(raw: &[u8], countdown: Duration) -> Result<Option<Publish>, TaskError> {
    let countdown = duration_from_secs("retry countdown", countdown.as_secs_f64())
        .map_err(|e| TaskError::value_error(e.to_string()))?;
    let eta = Timestamp::now().checked_add(countdown).ok_or_else(|| {
        TaskError::value_error(format!(
            "retry countdown of {} s is beyond the year 9999",
            countdown.as_secs_f64()
        ))
    })?;
    Ok(retry_envelope(raw, eta))
}

/// The envelope of `raw` sent again with `retries + 1` and `eta`.
fn retry_envelope(raw: &[u8], eta: Timestamp) -> Option<Publish> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    let headers = v.get_mut("headers")?.as_object_mut()?;
    headers.get("task")?;
    let retries = headers.get("retries").and_then(Value::as_u64).unwrap_or(0);
    headers.insert("retries".to_owned(), json!(retries.saturating_add(1)));
    headers.insert("eta".to_owned(), json!(eta.to_string()));
    headers.remove("redelivered");
    let props = v.get_mut("properties")?.as_object_mut()?;
    props.insert("delivery_tag".to_owned(), json!(crate::uuid::uuid4()));
    let priority = props.get("priority").and_then(kombu_priority).unwrap_or(0);
    let info = props.get_mut("delivery_info")?.as_object_mut()?;
    info.remove("redelivered");
    let exchange = info
        .get("exchange")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let routing_key = info.get("routing_key")?.as_str()?.to_owned();
    Some(Publish {
        exchange,
        routing_key,
        priority: Some(priority),
        message: v.to_string(),
    })
}

/// The message `raw` put back on `queue` by a
/// requeueing reject: marked `redelivered`, as kombu's restore marks it.
/// `None` for an envelope that cannot be read.
pub(crate) fn requeue_envelope(raw: &[u8], queue: &str) -> Option<Publish> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    if let Some(h) = v.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".to_owned(), Value::Bool(true));
    }
    let props = v.get_mut("properties")?.as_object_mut()?;
    let priority = props.get("priority").and_then(kombu_priority).unwrap_or(0);
    if let Some(info) = props
        .get_mut("delivery_info")
        .and_then(Value::as_object_mut)
    {
        info.insert("redelivered".to_owned(), Value::Bool(true));
    }
    Some(Publish::to_queue(queue, Some(priority), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeued_message_goes_to_its_queue_marked_redelivered() {
        let raw = br#"{"body": "", "headers": {"task": "t", "id": "1"}, "properties": {"priority": 5, "delivery_tag": "d1", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
        let p = requeue_envelope(raw, "q2").unwrap();
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("", "q2"));
        assert_eq!(p.priority, Some(5));
        let v: Value = serde_json::from_str(&p.message).unwrap();
        assert_eq!(v["headers"]["redelivered"], json!(true));
        assert_eq!(v["properties"]["delivery_info"]["redelivered"], json!(true));
        assert_eq!(
            v["properties"]["delivery_tag"],
            json!("d1"),
            "the tag is kept"
        );
        assert!(requeue_envelope(b"not json", "q").is_none());
    }
}
