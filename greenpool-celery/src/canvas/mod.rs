//! Follow-up work a finished task sends on, as Celery's tracer does: link
//! callbacks and the next chain step with the result, link errors with
//! the failed task's id.
//!
//! A task signature becomes one message here ([`message_for`]); chains,
//! groups and chords are applied in [`apply`], and a chord whose header
//! parts run here is joined as Celery's Redis backend joins it: see
//! [`chord`].

use serde_json::{Map, Value};

// Without Redis nothing joins: the keys and the conclusion go unused.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) mod chord;

pub(crate) mod apply;
pub(crate) mod builtins;

pub(crate) use apply::{apply, Applied, Caller};

use crate::broker::Publish;
use crate::protocol::{kombu_priority, Signature, TaskHeaders, TaskMessage, Timestamp};
use crate::repr::{cut, LOG_NAME_MAX};
use crate::seconds::{duration_from_secs, limit_from_secs};
use crate::task_error::TaskError;

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

/// A time option of a follow-up signature: seconds from now (a number)
/// or an ISO-8601 timestamp.
///
/// # Errors
///
/// A `ValueError` naming `what` for a number that is not a usable
/// duration (NaN, negative, `1e19`), or text that is not a timestamp;
/// Celery's `apply_async` raises in the same places.
fn when(what: &'static str, v: Option<&Value>) -> Result<Option<Timestamp>, TaskError> {
    let Some(v) = v else { return Ok(None) };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::INFINITY);
            let d = duration_from_secs(what, secs)
                .map_err(|e| TaskError::value_error(e.to_string()))?;
            Timestamp::now().checked_add(d).map(Some).ok_or_else(|| {
                TaskError::new(
                    "OverflowError",
                    format!("{what} of {secs} s is beyond the year 9999"),
                )
            })
        }
        Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|e: crate::error::ProtocolError| {
                TaskError::value_error(format!("{what}: {e}"))
            }),
        other => Err(TaskError::type_error(format!(
            "{what} must be seconds or an ISO-8601 time, not {other}"
        ))),
    }
}

/// A time limit option of a follow-up signature, in seconds.
fn limit(what: &'static str, v: Option<&Value>) -> Result<Option<f64>, TaskError> {
    let secs = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::INFINITY),
        Some(other) => {
            return Err(TaskError::type_error(format!(
                "{what} must be a number of seconds, not {other}"
            )))
        }
    };
    limit_from_secs(what, Some(secs)).map_err(|e| TaskError::value_error(e.to_string()))?;
    Ok(Some(secs))
}

/// The message that applies `sig` (as `sig.apply_async`
/// would), with `first` prepended to its args unless it is immutable,
/// `chain` as the rest of the chain, and `parent` as the calling task
/// (`None`: sent by a client, a root of its own).
/// `Ok(None)` for a signature without a task name (logged). The options
/// `group_id`, `group_index` and `chord` (set by [`apply`] on group and
/// chord members) become the message's group headers and chord body.
///
/// # Errors
///
/// The error Python's `apply_async` would raise for options that cannot
/// be used (`countdown` of `1e19`, a NaN time limit, ...): the calling
/// task then fails with it. A chain, group or chord signature is applied
/// by [`apply`], not here: it is a `NotImplementedError`.
pub(crate) fn message_for(
    sig: &Signature,
    first: Option<&Value>,
    chain: Option<Vec<Signature>>,
    parent: Option<&TaskHeaders>,
    parent_priority: Option<u8>,
) -> Result<Option<Publish>, TaskError> {
    let Some(task) = sig.task() else {
        tracing::warn!("skipping a follow-up signature without a task name");
        return Ok(None);
    };
    let shown = cut(task, LOG_NAME_MAX);
    if let Some(kind) = sig.0.get("subtask_type").and_then(Value::as_str) {
        return Err(TaskError::new(
            "NotImplementedError",
            format!(
                "{shown}: a {} signature is applied as a canvas, not sent as one task",
                cut(kind, LOG_NAME_MAX)
            ),
        ));
    }
    let empty = Map::new();
    let opts = sig.options().unwrap_or(&empty);
    let eta = match when("link eta", opts.get("eta"))? {
        Some(t) => Some(t),
        None => when("link countdown", opts.get("countdown"))?,
    };
    let expires = when("link expires", opts.get("expires"))?;
    let hard = limit("link time_limit", opts.get("time_limit"))?;
    let soft = limit("link soft_time_limit", opts.get("soft_time_limit"))?;
    let mut args = Vec::new();
    if let Some(v) = first.filter(|_| !sig.immutable()) {
        args.push(v.clone());
    }
    args.extend(sig.args().iter().cloned());
    let kwargs = sig.kwargs().cloned().unwrap_or_default();
    let mut msg = TaskMessage::new(task, args, kwargs);
    if let Some(id) = opts.get("task_id").and_then(Value::as_str) {
        msg.headers.id = id.to_owned();
        msg.properties.correlation_id = Some(id.to_owned());
    }
    // Sent by a task: its child, under its root. Sent by a client: a root.
    match parent {
        Some(parent) => {
            msg.headers.parent_id = Some(parent.id.clone());
            msg.headers.root_id = Some(parent.root_id.clone().unwrap_or_else(|| parent.id.clone()));
        }
        None => {
            msg.headers.parent_id = None;
            msg.headers.root_id = Some(msg.headers.id.clone());
        }
    }
    msg.headers.eta = eta;
    msg.headers.expires = expires;
    msg.headers.timelimit.hard = hard;
    msg.headers.timelimit.soft = soft;
    if let Some(reply_to) = opts.get("reply_to").and_then(Value::as_str) {
        msg.properties.reply_to = Some(reply_to.to_owned());
    }
    msg.embed.callbacks = signatures(opts.get("link"));
    msg.embed.errbacks = signatures(opts.get("link_error"));
    msg.embed.chain = chain.filter(|c| !c.is_empty());
    if let Some(group) = opts.get("group_id").and_then(Value::as_str) {
        msg.headers.group = Some(group.to_owned());
        msg.headers.group_index = opts.get("group_index").and_then(Value::as_i64);
    }
    if let Some(Value::Object(body)) = opts.get("chord") {
        msg.embed.chord = Some(Signature(body.clone()));
    }
    let queue = opts
        .get("queue")
        .and_then(|q| q.as_str().or_else(|| q.get("name").and_then(Value::as_str)))
        .or_else(|| opts.get("routing_key").and_then(Value::as_str))
        .unwrap_or("celery")
        .to_owned();
    let priority = opts
        .get("priority")
        .and_then(kombu_priority)
        .or(parent_priority)
        .unwrap_or(0);
    msg.properties.priority = Some(priority);
    match msg.to_envelope() {
        Ok(envelope) => Ok(Some(Publish::to_queue(&queue, Some(priority), envelope))),
        Err(e) => Err(TaskError::new(
            "EncodeError",
            format!("cannot encode follow-up {shown}: {e}"),
        )
        .with_module("kombu.exceptions")),
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
        let p = message_for(&next, Some(&json!(3)), Some(rest), Some(&parent), None)
            .unwrap()
            .unwrap();
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("", "q"));
        assert_eq!(p.priority, Some(6));
        let payload = p.message;
        let m = TaskMessage::from_envelope(payload.clone()).unwrap();
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
        let p = message_for(&im, Some(&json!(9)), None, Some(&parent), Some(2))
            .unwrap()
            .unwrap();
        assert_eq!((p.routing_key.as_str(), p.priority), ("celery", Some(2)));
        let payload = p.message;
        assert_eq!(
            TaskMessage::from_envelope(payload.clone()).unwrap().args,
            vec![json!(1)]
        );
        let group = sig(json!({"task": "celery.group", "subtask_type": "group"}));
        let e = message_for(&group, None, None, Some(&parent), None).unwrap_err();
        assert_eq!(e.exc_type(), "NotImplementedError");
    }

    #[test]
    fn unusable_numbers_fail_instead_of_panicking() {
        let parent = TaskHeaders {
            task: "t".into(),
            id: "p".into(),
            ..TaskHeaders::default()
        };
        for opts in [
            json!({"countdown": 1e19}),
            json!({"countdown": -1}),
            json!({"expires": 1e300}),
            json!({"time_limit": -5}),
            json!({"soft_time_limit": 1e20}),
            json!({"eta": "next tuesday"}),
        ] {
            let s = sig(json!({"task": "t.x", "args": [], "options": opts}));
            let e = message_for(&s, None, None, Some(&parent), None).unwrap_err();
            assert!(
                matches!(e.exc_type(), "ValueError" | "OverflowError"),
                "{opts}: {e}"
            );
        }
        let odd = sig(json!({"task": "t.x", "options": {"priority": 300, "countdown": 0}}));
        let p = message_for(&odd, None, None, Some(&parent), None)
            .unwrap()
            .unwrap();
        assert_eq!((p.routing_key.as_str(), p.priority), ("celery", Some(9)));
    }
}
