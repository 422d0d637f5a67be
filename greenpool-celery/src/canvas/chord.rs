//! A chord's join, as Celery's Redis result backend does it
//! (`on_chord_part_return`): each header part that ends (SUCCESS,
//! FAILURE or REVOKED) adds `[1, id, state, result]` to the chord's
//! sorted set `celery-taskset-meta-<group>.j`, scored by its place in
//! the header; the part that brings the set to the chord's size (`.s`,
//! set by the client, plus `.t`, parts added later) sends the body with
//! the header's results in order as its first argument. A failed part
//! fails the body instead, with `ChordError`, and sends the body's link
//! errors.
//!
//! This file holds what is decided without I/O: which finished request
//! is a chord part ([`part`]), the keys of a chord ([`JoinKeys`]) and
//! what to do once every part is in ([`conclude`]). The writes are made
//! by the Redis batcher (`broker/redis/chord.rs`), in the batch that
//! stores the part's result and before the part's ack.
//!
//! # Exactly once
//!
//! The join runs in one script, on the keys Celery 5.7's Redis backend
//! uses, so Python workers of that version and greenpool workers share a
//! chord safely: a part is added once (its `id:score` kept in `.d`), and
//! when the count is reached the chord is claimed (`.c`, set to the
//! part's task id for [`CLAIM_SECONDS`]) and the members are read. The
//! body (or its link errors) is then pushed under a once-key on the
//! broker (`greenpool.chord.<group>`, a day), in the same atomic write as
//! the part's ack; the chord's keys are deleted and `.c` is set to `done`
//! for [`DONE_SECONDS`] (so a late duplicate does nothing) in that same
//! write when the result backend is the broker's server, just after it
//! when the backend is another one.
//! Should the worker die between the join and that write, the part's
//! message (late ack) comes back; its join finds the claim its own or
//! expired and concludes again (as would a Python worker's), and the
//! once-key keeps greenpool from pushing the body twice. With early acks
//! the part's message is gone once it started; as with Celery, a worker
//! lost in that window leaves the chord unfinished.

use serde_json::{json, Value};

use super::{apply, Applied, Caller};
use crate::backend::TaskState;
use crate::protocol::{Signature, TaskHeaders, TaskMessage};
use crate::task_error::TaskError;

/// Celery's prefix of group keys in the result backend.
const GROUP_PREFIX: &str = "celery-taskset-meta-";

/// How long a claim holds before another part may conclude the chord
/// (Celery's default: twice its join timeout of 5 s).
pub(crate) const CLAIM_SECONDS: u64 = 10;

/// How long a concluded chord's claim key reads `done` (Celery's least).
pub(crate) const DONE_SECONDS: u64 = 300;

/// A finished header part, as the join needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChordPart {
    /// The chord's group id.
    pub(crate) group: String,
    /// The part's task id (the claim is made under it).
    pub(crate) task_id: String,
    /// Its score in the join: its place in the header, `+inf` without one.
    pub(crate) score: String,
    /// Its member of the join, `[1, id, state, result]` as JSON.
    pub(crate) member: String,
    /// The chord body.
    pub(crate) body: Signature,
    /// The part's ids, as the parent of the body.
    pub(crate) parent: TaskHeaders,
    /// The part's priority, inherited by the body.
    pub(crate) priority: Option<u8>,
}

/// The keys of one chord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinKeys {
    /// The sorted set of finished parts (`.j`).
    pub(crate) joined: String,
    /// Parts added to the chord after it started (`.t`).
    pub(crate) added: String,
    /// The header's size, set by the client (`.s`).
    pub(crate) size: String,
    /// The parts added, as `id:score` (`.d`).
    pub(crate) parts: String,
    /// The group's own key, where a client saves a header that holds
    /// groups (`GroupResult.save()`), so that the body gets their
    /// results nested.
    pub(crate) group: String,
    /// The claim of the conclusion, then `done` (`.c`).
    pub(crate) claim: String,
    /// The once-key of the body's push, on the broker.
    pub(crate) once: String,
}

impl JoinKeys {
    /// The keys of the chord of `group`.
    pub(crate) fn of(group: &str) -> Self {
        JoinKeys {
            joined: format!("{GROUP_PREFIX}{group}.j"),
            added: format!("{GROUP_PREFIX}{group}.t"),
            size: format!("{GROUP_PREFIX}{group}.s"),
            parts: format!("{GROUP_PREFIX}{group}.d"),
            group: format!("{GROUP_PREFIX}{group}"),
            claim: format!("{GROUP_PREFIX}{group}.c"),
            once: format!("greenpool.chord.{group}"),
        }
    }
}

/// The chord part of a request of `msg` that ended in `state` with
/// `result`: `None` unless the message is a header part (it names a chord
/// body and a group) and the state is one Celery joins on (SUCCESS,
/// FAILURE, REVOKED; a retry is not an end).
pub(crate) fn part(msg: &TaskMessage, state: TaskState, result: &Value) -> Option<ChordPart> {
    if !matches!(
        state,
        TaskState::Success | TaskState::Failure | TaskState::Revoked
    ) {
        return None;
    }
    let body = msg.embed.chord.as_ref()?;
    let group = msg.headers.group.as_deref().filter(|g| !g.is_empty())?;
    let id = &msg.headers.id;
    let score = match msg.headers.group_index {
        Some(i) => i.to_string(),
        None => "+inf".to_owned(),
    };
    let member = json!([1, id, state.as_str(), result]).to_string();
    let parent = TaskHeaders {
        id: id.clone(),
        root_id: msg.headers.root_id.clone(),
        ..TaskHeaders::default()
    };
    Some(ChordPart {
        group: group.to_owned(),
        task_id: id.clone(),
        score,
        member,
        body: body.clone(),
        parent,
        priority: msg.properties.priority,
    })
}

/// What the last part of a chord does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Conclusion {
    /// Send the body (one message, or more for a group body).
    Run(Applied),
    /// Fail the body: store `error` as its FAILURE (when it has a task
    /// id) and send its link errors.
    Fail {
        /// The body's task id.
        body_id: Option<String>,
        /// The `ChordError`.
        error: TaskError,
        /// The body's link errors, called with its id.
        errbacks: Applied,
    },
}

/// What to do once every part of `part`'s chord is in; `members` are the
/// join's members in header order, `saved` the header's structure a
/// client saved when it holds groups (`{"result": GroupResult.as_tuple()}`).
pub(crate) fn conclude(part: &ChordPart, members: &[Vec<u8>], saved: Option<&[u8]>) -> Conclusion {
    let mut results = Vec::with_capacity(members.len());
    for m in members {
        match unpack(m) {
            Ok(v) => results.push(v),
            Err(e) => return fail(part, e),
        }
    }
    let results = match saved {
        None => Value::Array(results.into_iter().map(|(_, v)| v).collect()),
        Some(saved) => match nested(saved, results) {
            Ok(v) => v,
            Err(e) => return fail(part, e),
        },
    };
    // Chain steps after the chord ride in the body's options (last first).
    let rest: Vec<Signature> = match part.body.options().and_then(|o| o.get("chain")) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_object().map(|m| Signature(m.clone())))
            .collect(),
        _ => Vec::new(),
    };
    match apply(&part.body, Some(&results), rest, caller(part)) {
        Ok(a) if a.publish.is_empty() => fail(
            part,
            chord_error("Callback error: the chord body names no task".to_owned()),
        ),
        Ok(a) => Conclusion::Run(a),
        Err(e) => fail(part, chord_error(format!("Callback error: {e}"))),
    }
}

/// The results arranged as the saved header is: a task's tuple
/// `[[id, parent], null]` becomes its result, a group's `[[id, parent],
/// [children]]` the list of its children's.
fn nested(saved: &[u8], results: Vec<(String, Value)>) -> Result<Value, TaskError> {
    let join_error = |why: &str| chord_error(format!("Join error: {why}"));
    let v: Value = serde_json::from_slice(saved).map_err(|e| join_error(&e.to_string()))?;
    let header = v
        .get("result")
        .ok_or_else(|| join_error("the saved header has no result"))?;
    let mut by_id: std::collections::HashMap<String, Value> = results.into_iter().collect();
    fn walk(
        node: &Value,
        by_id: &mut std::collections::HashMap<String, Value>,
        depth: usize,
    ) -> Result<Value, String> {
        if depth > 64 {
            return Err("the saved header nests too deep".to_owned());
        }
        let id = node
            .get(0)
            .and_then(|h| h.get(0))
            .and_then(Value::as_str)
            .ok_or("a saved result without an id")?;
        match node.get(1) {
            Some(Value::Array(children)) => children
                .iter()
                .map(|c| walk(c, by_id, depth + 1))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => by_id
                .remove(id)
                .ok_or_else(|| format!("no result joined for {id}")),
        }
    }
    match header.get(1) {
        Some(Value::Array(children)) => children
            .iter()
            .map(|c| walk(c, &mut by_id, 0))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
            .map_err(|e| join_error(&e)),
        _ => Err(join_error("the saved header is not a group")),
    }
}

/// One member's task id and result, or the `ChordError` of a part that
/// failed.
fn unpack(member: &[u8]) -> Result<(String, Value), TaskError> {
    let parsed: Result<(Value, String, String, Value), _> = serde_json::from_slice(member);
    let (_, id, state, result) = match parsed {
        Ok(t) => t,
        Err(e) => return Err(chord_error(format!("Join error: {e}"))),
    };
    if state == TaskState::Failure.as_str() || state == TaskState::Revoked.as_str() {
        let shown = TaskError::from_json(&result)
            .map(|e| e.to_string())
            .unwrap_or_else(|| crate::repr::repr(&result));
        return Err(chord_error(format!("Dependency {id} raised {shown}")));
    }
    Ok((id, result))
}

/// The body is applied as the part's follow-up, on a backend that joins.
fn caller(part: &ChordPart) -> Caller<'_> {
    Caller {
        parent: Some(&part.parent),
        priority: part.priority,
        joins_chords: true,
    }
}

fn chord_error(message: String) -> TaskError {
    TaskError::new("ChordError", message).with_module("celery.exceptions")
}

/// The body failed with `error`: its link errors, called with its id.
fn fail(part: &ChordPart, error: TaskError) -> Conclusion {
    let body_id = part
        .body
        .options()
        .and_then(|o| o.get("task_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut errbacks = Applied::default();
    let links = part.body.options().and_then(|o| o.get("link_error"));
    let links: Vec<Signature> = match links {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_object().map(|m| Signature(m.clone())))
            .collect(),
        Some(Value::Object(m)) => vec![Signature(m.clone())],
        _ => Vec::new(),
    };
    let first = body_id.clone().map(Value::String);
    for sig in &links {
        match apply(sig, first.as_ref(), Vec::new(), caller(part)) {
            Ok(a) => errbacks.extend(a),
            Err(e) => tracing::error!(
                "cannot send a link error of chord {}: {}",
                crate::repr::cut(&part.group, crate::repr::LOG_NAME_MAX),
                crate::repr::cut(&e.to_string(), crate::repr::LOG_REPR_MAX)
            ),
        }
    }
    Conclusion::Fail {
        body_id,
        error,
        errbacks,
    }
}

#[cfg(test)]
#[path = "chord_tests.rs"]
mod tests;
