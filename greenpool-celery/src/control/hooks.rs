//! What the consumer and each request call into: revoked checks, the
//! registry of held requests, rate and time limits. Kept here so the
//! request path only gains one-line calls; what they count goes through
//! the node's recorder (`recorder.rs`).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use greenpool::JobId;

use super::node::Node;
pub(crate) use super::requests::Listed;
use super::requests::Phase;
use super::revoke::revoked_error;
use crate::backend::TaskState;
use crate::broker::Received;
use crate::outcome::{Counter, Event, TaskOutput as Output};
use crate::protocol::{TaskMessage, TimeLimit, Timestamp};
use crate::worker::Shared;

/// The span a task runs in (its job and its outcome callback), so every
/// log line of the task carries its id, name, retries and queue.
pub(crate) fn task_span(msg: &TaskMessage, queue: &str) -> tracing::Span {
    tracing::info_span!(
        "task",
        id = %msg.headers.id,
        name = %msg.headers.task,
        retries = msg.headers.retries,
        queue = %queue,
    )
}

/// A request was decoded and its task is known. Discards it when its id
/// is revoked (REVOKED stored, `task-revoked` sent, acked) and returns
/// `None`; otherwise sends `task-received` and lists it as reserved
/// (under its id, with the message it came in).
pub(crate) fn received(
    shared: &Shared,
    msg: &TaskMessage,
    tag: &str,
    id: &Arc<str>,
    received: &Arc<Received>,
) -> Option<Listed> {
    if !still_wanted(shared, msg, tag) {
        return None;
    }
    let node = &shared.control;
    node.recorder.received(msg);
    Some(node.requests.insert(id, received, msg.headers.eta))
}

/// False (after discarding it as revoked) when `msg`'s id was revoked.
pub(crate) fn still_wanted(shared: &Shared, msg: &TaskMessage, tag: &str) -> bool {
    let id = &msg.headers.id;
    if !shared.control.revoked.contains(id) {
        return true;
    }
    tracing::info!("Discarding revoked task: {}[{id}]", msg.headers.task);
    let result = revoked_error("revoked").to_json();
    shared.join_chord(msg, TaskState::Revoked, &result, Some(tag));
    if !msg.headers.ignore_result {
        shared.store(msg, TaskState::Revoked, result, None);
    }
    // Counted as a request revoked before it started.
    shared
        .control
        .recorder
        .settled(msg, Some(Counter::Revoked), &Event::Revoked(None), None);
    shared.ack(tag);
    false
}

/// Moves a listed request to the scheduled list (waiting for its ETA)
/// or back; the broker's prefetch count follows (one more per waiting
/// request).
pub(crate) fn scheduled(shared: &Shared, listed: &Listed, waiting: bool) {
    listed.set_phase(if waiting {
        Phase::Scheduled
    } else {
        Phase::Reserved
    });
    let node = &shared.control;
    node.prefetch.set_eta_held(node.requests.scheduled_count());
}

/// Waits for a rate-limit token of task `name`.
pub(crate) async fn before_apply(shared: &Shared, name: &str) {
    shared.control.rate_limits.acquire(name).await;
}

/// The time limits a request of `name` runs with.
pub(crate) fn time_limits(shared: &Shared, name: &str, message: TimeLimit) -> TimeLimit {
    shared.control.time_limits(name, message)
}

/// Checked when the job starts: true when the id was revoked meanwhile
/// (the task is then not called and the job ends with
/// [`revoked_output`]).
pub(crate) fn revoked_at_start(node: &Node, id: &str) -> bool {
    node.revoked.contains(id)
}

/// The output of a job whose task was revoked before it started.
pub(crate) fn revoked_output() -> Output {
    Output::Ran(Err(revoked_error("revoked")), Duration::ZERO)
}

/// The job started: list it as active with its job id, record it
/// (`stats.total`, `task-started`).
pub(crate) fn started(node: &Node, listed: &Listed, job: JobId, name: &str, id: &str) {
    listed.set_phase(Phase::Active {
        job,
        since: Timestamp::now().unix_seconds(),
    });
    node.recorder.started(name, id);
}

/// Takes the signal of a `revoke(terminate=True)` aimed at `id`, when
/// one was: looked up once a job ends, before its outcome is decided.
pub(crate) fn take_terminating(node: &Node, id: &str) -> Option<i32> {
    node.terminating
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(id)
}
