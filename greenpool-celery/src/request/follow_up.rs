//! The follow-up work of a finished request: link callbacks and the next
//! chain step after a success, link errors after a failure, each applied
//! as Celery applies a signature (a task, a chain, a group or a chord:
//! see [`crate::canvas::apply`]). Built here, sent by [`super::settle`].

use serde_json::Value;

use crate::canvas::{apply, Applied, Caller};
use crate::protocol::TaskMessage;
use crate::task_error::TaskError;

/// How `msg`'s follow-ups are applied; `joins_chords` tells whether the
/// result backend joins chords.
fn caller(msg: &TaskMessage, joins_chords: bool) -> Caller<'_> {
    Caller {
        parent: Some(&msg.headers),
        priority: msg.properties.priority,
        joins_chords,
    }
}

/// The link callbacks and the next chain step of `msg` after it returned
/// `result`.
///
/// # Errors
///
/// The error of the first follow-up that cannot be applied (then none is
/// sent and the task fails with it, as the exception from Celery's
/// `apply_async` would fail it).
pub(crate) fn on_success(
    msg: &TaskMessage,
    result: &Value,
    joins_chords: bool,
) -> Result<Applied, TaskError> {
    let embed = &msg.embed;
    let caller = caller(msg, joins_chords);
    let mut out = Applied::default();
    for sig in embed.callbacks.iter().flatten() {
        out.extend(apply(sig, Some(result), Vec::new(), caller)?);
    }
    if let Some(chain) = embed.chain.as_ref().filter(|c| !c.is_empty()) {
        let mut rest = chain.clone();
        if let Some(next) = rest.pop() {
            out.extend(apply(&next, Some(result), rest, caller)?);
        }
    }
    Ok(out)
}

/// The link errors of `msg` after it failed, and the errors of those
/// that cannot be applied (logged and skipped: the task has failed
/// already).
pub(crate) fn on_failure(msg: &TaskMessage, joins_chords: bool) -> (Applied, Vec<TaskError>) {
    let mut out = Applied::default();
    let mut skipped = Vec::new();
    let Some(errbacks) = msg.embed.errbacks.as_ref().filter(|e| !e.is_empty()) else {
        return (out, skipped);
    };
    let id = Value::String(msg.headers.id.clone());
    let caller = caller(msg, joins_chords);
    for sig in errbacks {
        match apply(sig, Some(&id), Vec::new(), caller) {
            Ok(a) => out.extend(a),
            Err(e) => skipped.push(e),
        }
    }
    (out, skipped)
}
