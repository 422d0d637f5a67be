//! The fields of each task event, in the shapes `celery events` and
//! Flower read.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::protocol::TaskMessage;
use crate::task_error::TaskError;

fn fields(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `task-received`: what the request is.
pub(crate) fn received(msg: &TaskMessage) -> Map<String, Value> {
    let h = &msg.headers;
    fields([
        ("uuid", json!(h.id)),
        ("name", json!(h.task)),
        (
            "args",
            json!(h
                .argsrepr
                .clone()
                .unwrap_or_else(|| crate::repr::args_repr(&msg.args))),
        ),
        (
            "kwargs",
            json!(h
                .kwargsrepr
                .clone()
                .unwrap_or_else(|| crate::repr::kwargs_repr(&msg.kwargs))),
        ),
        ("root_id", json!(h.root_id)),
        ("parent_id", json!(h.parent_id)),
        ("retries", json!(h.retries)),
        ("eta", json!(h.eta.map(|t| t.to_string()))),
        ("expires", json!(h.expires.map(|t| t.to_string()))),
    ])
}

/// `task-started`.
pub(crate) fn started(id: &str) -> Map<String, Value> {
    fields([("uuid", json!(id))])
}

/// `task-succeeded`: the result's repr and the run time in seconds.
pub(crate) fn succeeded(id: &str, result: &Value, runtime: Duration) -> Map<String, Value> {
    fields([
        ("uuid", json!(id)),
        ("result", json!(crate::repr::repr(result))),
        ("runtime", json!(runtime.as_secs_f64())),
    ])
}

/// `task-failed` and `task-retried`: the exception's repr and traceback.
pub(crate) fn failed(id: &str, error: &Value, traceback: Option<&str>) -> Map<String, Value> {
    fields([
        ("uuid", json!(id)),
        ("exception", json!(exception_repr(error))),
        ("traceback", json!(traceback)),
    ])
}

/// `task-revoked`: whether it was terminated (and by which signal) or
/// expired.
pub(crate) fn revoked(
    id: &str,
    terminated: bool,
    signum: Option<i32>,
    expired: bool,
) -> Map<String, Value> {
    fields([
        ("uuid", json!(id)),
        ("terminated", json!(terminated)),
        ("signum", json!(signum)),
        ("expired", json!(expired)),
    ])
}

/// `task-rejected`: the message was rejected, back on its queue when
/// `requeue`.
pub(crate) fn rejected(id: &str, requeue: bool) -> Map<String, Value> {
    fields([("uuid", json!(id)), ("requeue", json!(requeue))])
}

/// Python's repr of the exception stored as `error` (Celery's
/// `{"exc_type", "exc_message", "exc_module"}`): `ValueError('boom')`.
pub(crate) fn exception_repr(error: &Value) -> String {
    match TaskError::from_json(error) {
        Some(e) => {
            let args: Vec<String> = e.args().iter().map(crate::repr::repr).collect();
            format!("{}({})", e.exc_type(), args.join(", "))
        }
        None => crate::repr::repr(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_repr_is_pythons() {
        let e = TaskError::value_error("kaboom").to_json();
        assert_eq!(exception_repr(&e), "ValueError('kaboom')");
        let e = TaskError::new("TimeLimitExceeded", "")
            .with_args(vec![json!(4.0)])
            .to_json();
        assert_eq!(exception_repr(&e), "TimeLimitExceeded(4.0)");
    }

    #[test]
    fn received_falls_back_to_reprs() {
        let msg = TaskMessage::new("t", vec![json!(2), json!(3)], Map::new());
        let f = received(&msg);
        assert_eq!(f["args"], json!("(2, 3)"));
        assert_eq!(f["kwargs"], json!("{}"));
        assert_eq!(f["eta"], Value::Null);
    }
}
