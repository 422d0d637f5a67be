//! Applying a signature as Celery's `Signature.apply_async` does, for
//! the work a finished task sends on (a link, a chain step, a link error,
//! a chord's body): a task signature is one message; a `chain` is its
//! first task carrying the rest; a `group` is one message per member,
//! each naming the group and its place in it; a `chord` is its header as
//! such a group whose members carry the body, with the chord's size set
//! in the result backend before any part is sent (see [`super::chord`]).
//!
//! What cannot be applied here is an error the calling task fails with,
//! never a message skipped behind a success: a signature of an unknown
//! `subtask_type`, a chord where the result backend has no join, a group
//! followed by more chain steps (Celery's client makes that a chord), a
//! group or header member that is not a task signature. A chord followed
//! by more steps carries them in its body's `chain` option, as Celery's
//! does, and the join applies them with the body.

use serde_json::{Map, Value};

use super::message_for;
use crate::broker::Publish;
use crate::protocol::{Signature, TaskHeaders};
use crate::task_error::TaskError;

/// What applying a signature writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Applied {
    /// The messages, in order.
    pub(crate) publish: Vec<Publish>,
    /// Chord sizes to set (group id, number of parts), before the
    /// messages are sent.
    pub(crate) chord_sizes: Vec<(String, usize)>,
}

impl Applied {
    /// Appends `other`'s writes to these.
    pub(crate) fn extend(&mut self, other: Applied) {
        self.publish.extend(other.publish);
        self.chord_sizes.extend(other.chord_sizes);
    }
}

/// Where and how a signature is applied: the calling task and what it
/// hands on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// The calling task's headers (its id and root id become the parent
    /// and root of what is sent); `None` for a client.
    pub(crate) parent: Option<&'a TaskHeaders>,
    /// Its priority, inherited when a signature names none.
    pub(crate) priority: Option<u8>,
    /// Whether the result backend joins chords (Redis does; rpc:// not).
    pub(crate) joins_chords: bool,
}

fn not_implemented(message: String) -> TaskError {
    TaskError::new("NotImplementedError", message)
}

/// The member signatures of a `group` signature (`kwargs.tasks`), or of
/// a plain list of signatures.
fn members(v: Option<&Value>) -> Result<Vec<Signature>, TaskError> {
    let items = match v {
        Some(Value::Array(items)) => items,
        Some(Value::Object(m)) => match m.get("kwargs").and_then(|k| k.get("tasks")) {
            Some(Value::Array(items)) => items,
            _ => return Err(TaskError::value_error("a group without tasks")),
        },
        _ => return Err(TaskError::value_error("a group without tasks")),
    };
    items
        .iter()
        .map(|i| match i {
            Value::Object(m) => Ok(Signature(m.clone())),
            other => Err(TaskError::type_error(format!(
                "a group member must be a signature, not {other}"
            ))),
        })
        .collect()
}

fn kind(sig: &Signature) -> Option<&str> {
    sig.0.get("subtask_type").and_then(Value::as_str)
}

fn option<'s>(sig: &'s Signature, key: &str) -> Option<&'s Value> {
    sig.options().and_then(|o| o.get(key))
}

/// `sig` applied with `first` as its first argument (unless it is
/// immutable) and `chain` as the rest of the chain it belongs to (last
/// task first).
///
/// # Errors
///
/// The error the calling task fails with: see the module's docs, and
/// [`message_for`]'s for the options of a task signature.
pub(crate) fn apply(
    sig: &Signature,
    first: Option<&Value>,
    chain: Vec<Signature>,
    caller: Caller<'_>,
) -> Result<Applied, TaskError> {
    let first = first.filter(|_| !sig.immutable());
    match kind(sig) {
        None => {
            let chain = (!chain.is_empty()).then_some(chain);
            let publish = message_for(sig, first, chain, caller.parent, caller.priority)?;
            Ok(Applied {
                publish: publish.into_iter().collect(),
                chord_sizes: Vec::new(),
            })
        }
        Some("chain") => {
            let tasks = members(sig.0.get("kwargs").and_then(|k| k.get("tasks")))?;
            let mut tasks = tasks.into_iter();
            let Some(head) = tasks.next() else {
                return Ok(Applied::default());
            };
            // The rest of this chain runs before the rest of the outer one.
            let mut rest = chain;
            rest.extend(tasks.rev());
            apply(&head, first, rest, caller)
        }
        Some("group") => {
            refuse_more_steps("group", &chain)?;
            let tasks = members(sig.0.get("kwargs").and_then(|k| k.get("tasks")))?;
            let id = group_id(sig);
            group(&tasks, &id, first, None, caller)
        }
        Some("chord") => {
            if !caller.joins_chords {
                return Err(not_implemented(
                    "a chord needs a result backend that joins chords (Redis); \
                     the rpc:// backend does not"
                        .to_owned(),
                ));
            }
            let kwargs = sig.0.get("kwargs");
            let header = kwargs.and_then(|k| k.get("header"));
            let tasks = members(header)?;
            let mut body = match kwargs.and_then(|k| k.get("body")) {
                Some(Value::Object(m)) => Signature(m.clone()),
                _ => return Err(TaskError::value_error("a chord without a body")),
            };
            // The rest of the chain goes on after the body, as Celery's
            // chord passes its `chain` option to the body.
            if !chain.is_empty() {
                let rest: Vec<Value> = chain.into_iter().map(|s| Value::Object(s.0)).collect();
                let opts = body
                    .0
                    .entry("options")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(o) = opts {
                    o.insert("chain".to_owned(), Value::Array(rest));
                }
            }
            // The body is applied when the join concludes, whatever its
            // form (see `chord::conclude`).
            // The group id: the chord's own id, else its header's.
            let id = option(sig, "task_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    header
                        .and_then(|h| h.get("options"))
                        .and_then(|o| o.get("task_id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(crate::uuid::uuid4);
            let mut applied = group(&tasks, &id, first, Some(&body), caller)?;
            applied.chord_sizes.push((id, tasks.len()));
            Ok(applied)
        }
        Some(other) => Err(not_implemented(format!(
            "greenpool cannot apply a signature of subtask_type {:?}",
            crate::repr::cut(other, crate::repr::LOG_NAME_MAX)
        ))),
    }
}

/// Celery upgrades a group followed by more steps to a chord on the
/// client; anything else is not applied here.
fn refuse_more_steps(what: &str, chain: &[Signature]) -> Result<(), TaskError> {
    if chain.is_empty() {
        Ok(())
    } else {
        Err(not_implemented(format!(
            "greenpool does not apply a {what} followed by more chain steps"
        )))
    }
}

/// The group's id: its `task_id` option, else a new one.
fn group_id(sig: &Signature) -> String {
    option(sig, "task_id")
        .and_then(Value::as_str)
        .map_or_else(crate::uuid::uuid4, str::to_owned)
}

/// One message per member of group `id`, each with the group, its place,
/// `first` (unless the member is immutable) and, for a chord's header,
/// the `body`.
fn group(
    tasks: &[Signature],
    id: &str,
    first: Option<&Value>,
    body: Option<&Signature>,
    caller: Caller<'_>,
) -> Result<Applied, TaskError> {
    let mut applied = Applied::default();
    for (index, task) in tasks.iter().enumerate() {
        if let Some(k) = kind(task) {
            return Err(not_implemented(format!(
                "greenpool does not apply a group or chord header holding a {k}"
            )));
        }
        let mut member = task.clone();
        let opts = member
            .0
            .entry("options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = opts {
            o.insert("group_id".to_owned(), Value::String(id.to_owned()));
            o.insert("group_index".to_owned(), Value::from(index));
            if let Some(b) = body {
                o.insert("chord".to_owned(), Value::Object(b.0.clone()));
            }
        }
        let first = first.filter(|_| !member.immutable());
        let publish = message_for(&member, first, None, caller.parent, caller.priority)?;
        applied.publish.extend(publish);
    }
    Ok(applied)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
