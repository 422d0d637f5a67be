//! The follow-up messages of a finished request: link callbacks and the
//! next chain step after a success, link errors after a failure. Built
//! here, sent by [`super::settle`].

use serde_json::Value;

use super::retry::Publish;
use crate::protocol::TaskMessage;
use crate::task_error::TaskError;

/// The link callbacks and the next chain step of `msg` after it returned
/// `result`.
///
/// # Errors
///
/// The error of the first follow-up that cannot be built (then none is
/// sent and the task fails with it, as the exception from Celery's
/// `apply_async` would fail it).
pub(crate) fn on_success(msg: &TaskMessage, result: &Value) -> Result<Vec<Publish>, TaskError> {
    let embed = &msg.embed;
    let priority = msg.properties.priority;
    let mut out = Vec::new();
    for sig in embed.callbacks.iter().flatten() {
        out.extend(crate::canvas::message_for(
            sig,
            Some(result),
            None,
            &msg.headers,
            priority,
        )?);
    }
    if let Some(chain) = embed.chain.as_ref().filter(|c| !c.is_empty()) {
        let mut rest = chain.clone();
        if let Some(next) = rest.pop() {
            out.extend(crate::canvas::message_for(
                &next,
                Some(result),
                Some(rest),
                &msg.headers,
                priority,
            )?);
        }
    }
    Ok(out)
}

/// The link errors of `msg` after it failed, and the errors of those
/// that cannot be built (logged and skipped).
pub(crate) fn on_failure(msg: &TaskMessage) -> (Vec<Publish>, Vec<TaskError>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let Some(errbacks) = msg.embed.errbacks.as_ref().filter(|e| !e.is_empty()) else {
        return (out, skipped);
    };
    let id = Value::String(msg.headers.id.clone());
    let priority = msg.properties.priority;
    for sig in errbacks {
        match crate::canvas::message_for(sig, Some(&id), None, &msg.headers, priority) {
            Ok(m) => out.extend(m),
            Err(e) => skipped.push(e),
        }
    }
    (out, skipped)
}
