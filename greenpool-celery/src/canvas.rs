//! Follow-up work a finished task sends on, as Celery's tracer does: link
//! callbacks and the next chain step with the result, link errors with
//! the failed task's id.
//!
//! Only plain task signatures are sent; group, chord and nested chain
//! signatures in callbacks are logged and skipped.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::outbox::FollowUp;
use crate::protocol::{Signature, TaskHeaders, TaskMessage, Timestamp};

fn signatures(v: Option<&Value>) -> Option<Vec<Signature>> {
    match v? {
        Value::Object(m) => Some(vec![Signature(m.clone())]),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_object().map(|m| Signature(m.clone())))
                .collect(),
        ),
        _ => None,
    }
}

fn when(v: Option<&Value>) -> Option<Timestamp> {
    match v? {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Timestamp::now() + Duration::from_secs_f64(s)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The queue, priority and envelope that apply `sig` (as `sig.apply_async`
/// would), with `first` prepended to its args unless it is immutable,
/// `chain` as the rest of the chain, and `parent` as the calling task.
/// `None` for signatures this worker cannot send.
pub(crate) fn message_for(
    sig: &Signature,
    first: Option<&Value>,
    chain: Option<Vec<Signature>>,
    parent: &TaskHeaders,
    parent_priority: Option<u8>,
) -> Option<FollowUp> {
    let Some(task) = sig.task() else {
        tracing::warn!("skipping a follow-up signature without a task name");
        return None;
    };
    if let Some(kind) = sig.0.get("subtask_type").and_then(Value::as_str) {
        tracing::warn!("skipping follow-up {task}: {kind} signatures are not supported");
        return None;
    }
    let mut args = Vec::new();
    if let Some(v) = first.filter(|_| !sig.immutable()) {
        args.push(v.clone());
    }
    args.extend(sig.args().iter().cloned());
    let kwargs = sig.kwargs().cloned().unwrap_or_default();
    let empty = Map::new();
    let opts = sig.options().unwrap_or(&empty);
    let mut msg = TaskMessage::new(task, args, kwargs);
    if let Some(id) = opts.get("task_id").and_then(Value::as_str) {
        msg.headers.id = id.to_owned();
        msg.properties.correlation_id = Some(id.to_owned());
    }
    msg.headers.parent_id = Some(parent.id.clone());
    msg.headers.root_id = Some(parent.root_id.clone().unwrap_or_else(|| parent.id.clone()));
    msg.headers.eta = when(opts.get("eta")).or_else(|| when(opts.get("countdown")));
    msg.headers.expires = when(opts.get("expires"));
    msg.headers.timelimit.hard = opts.get("time_limit").and_then(Value::as_f64);
    msg.headers.timelimit.soft = opts.get("soft_time_limit").and_then(Value::as_f64);
    if let Some(reply_to) = opts.get("reply_to").and_then(Value::as_str) {
        msg.properties.reply_to = Some(reply_to.to_owned());
    }
    msg.embed.callbacks = signatures(opts.get("link"));
    msg.embed.errbacks = signatures(opts.get("link_error"));
    msg.embed.chain = chain.filter(|c| !c.is_empty());
    let queue = opts
        .get("queue")
        .and_then(|q| q.as_str().or_else(|| q.get("name").and_then(Value::as_str)))
        .or_else(|| opts.get("routing_key").and_then(Value::as_str))
        .unwrap_or("celery")
        .to_owned();
    let priority = opts
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p.min(9) as u8)
        .or(parent_priority)
        .unwrap_or(0);
    msg.properties.priority = Some(priority);
    msg.properties.delivery_info.routing_key = queue.clone();
    match msg.encode() {
        Ok(payload) => Some(FollowUp {
            queue,
            priority,
            payload,
        }),
        Err(e) => {
            tracing::error!("cannot encode follow-up {task}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sig(v: Value) -> Signature {
        Signature(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn chain_step_gets_the_result_and_the_rest() {
        let parent = TaskHeaders {
            task: "t.add".into(),
            id: "p1".into(),
            root_id: Some("r1".into()),
            ..TaskHeaders::default()
        };
        let next = sig(json!({"task": "t.add", "args": [3], "kwargs": {},
            "options": {"task_id": "c2", "queue": "q", "priority": 6}, "subtask_type": null, "immutable": false}));
        let rest = vec![sig(json!({"task": "t.add", "args": [4]}))];
        let f = message_for(&next, Some(&json!(3)), Some(rest), &parent, None).unwrap();
        let payload = f.payload;
        assert_eq!((f.queue.as_str(), f.priority), ("q", 6));
        let m = TaskMessage::decode(&payload).unwrap();
        assert_eq!(m.headers.id, "c2");
        assert_eq!(m.args, vec![json!(3), json!(3)]);
        assert_eq!(m.headers.parent_id.as_deref(), Some("p1"));
        assert_eq!(m.headers.root_id.as_deref(), Some("r1"));
        assert_eq!(m.embed.chain.unwrap()[0].args(), &[json!(4)]);
    }

    #[test]
    fn immutable_and_unsupported_signatures() {
        let parent = TaskHeaders {
            task: "t".into(),
            id: "p".into(),
            ..TaskHeaders::default()
        };
        let im = sig(json!({"task": "t.x", "args": [1], "immutable": true}));
        let f = message_for(&im, Some(&json!(9)), None, &parent, Some(2)).unwrap();
        let payload = f.payload;
        assert_eq!((f.queue.as_str(), f.priority), ("celery", 2));
        assert_eq!(TaskMessage::decode(&payload).unwrap().args, vec![json!(1)]);
        let group = sig(json!({"task": "celery.group", "subtask_type": "group"}));
        assert!(message_for(&group, None, None, &parent, None).is_none());
    }
}
