//! What the consumer and each request call into: revoked checks, the
//! registry of held requests, rate and time limits, task events. Kept
//! here so the request path only gains one-line calls.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use greenpool::{JobId, Outcome, TerminateReason};
use serde_json::{Map, Value};

use super::node::Node;
pub(crate) use super::requests::Listed;
use super::requests::Phase;
use super::revoke::revoked_error;
use crate::backend::TaskState;
use crate::events::task as ev;
use crate::protocol::{TaskMessage, TimeLimit, Timestamp};
use crate::worker::{bump, Shared};

use crate::request::TaskOutput as Output;

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
/// (under its id, with the envelope text `raw` it came in).
pub(crate) fn received(
    shared: &Shared,
    msg: &TaskMessage,
    tag: &str,
    id: &Arc<str>,
    raw: &Arc<String>,
) -> Option<Listed> {
    if !still_wanted(shared, msg, tag) {
        return None;
    }
    let node = &shared.control;
    task_event(node, "task-received", &msg.headers.task, || {
        ev::received(msg)
    });
    Some(node.requests.insert(id, raw, msg.headers.eta))
}

/// False (after discarding it as revoked) when `msg`'s id was revoked.
pub(crate) fn still_wanted(shared: &Shared, msg: &TaskMessage, tag: &str) -> bool {
    let id = &msg.headers.id;
    if !shared.control.revoked.contains(id) {
        return true;
    }
    tracing::info!("Discarding revoked task: {}[{id}]", msg.headers.task);
    bump(&shared.counters.revoked);
    shared.control.count_processed();
    if !msg.headers.ignore_result {
        shared.store(
            msg,
            TaskState::Revoked,
            revoked_error("revoked").to_json(),
            None,
        );
    }
    task_event(&shared.control, "task-revoked", &msg.headers.task, || {
        ev::revoked(id, false, None, false)
    });
    shared.ack(tag);
    false
}

/// An expired request was discarded: `task-revoked` with `expired`.
pub(crate) fn expired(shared: &Shared, msg: &TaskMessage) {
    shared.control.count_processed();
    task_event(&shared.control, "task-revoked", &msg.headers.task, || {
        ev::revoked(&msg.headers.id, false, None, true)
    });
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

/// The job started: list it as active with its job id, count it, send
/// `task-started`.
pub(crate) fn started(node: &Node, listed: &Listed, job: JobId, name: &str, id: &str) {
    listed.set_phase(Phase::Active {
        job,
        since: Timestamp::now().unix_seconds(),
    });
    node.count_accepted(name);
    task_event(node, "task-started", name, || ev::started(id));
}

/// Takes the signal of a `revoke(terminate=True)` aimed at `id`, when
/// one was: looked up once a job ends, before its outcome is decided.
pub(crate) fn take_terminating(node: &Node, id: &str) -> Option<i32> {
    node.terminating
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(id)
}

/// A job ended revoked: terminated by `revoke(terminate=…)` with
/// `signal`, or (`None`) revoked before it started. Sends its one
/// `task-revoked` and counts it processed.
pub(crate) fn revoked_finished(shared: &Shared, msg: &TaskMessage, signal: Option<i32>) {
    let node = &shared.control;
    task_event(node, "task-revoked", &msg.headers.task, || {
        ev::revoked(&msg.headers.id, signal.is_some(), signal, false)
    });
    node.count_processed();
}

/// Sends the event of a job's reported outcome.
pub(crate) fn finished(
    shared: &Shared,
    msg: &TaskMessage,
    outcome: &Outcome<Output>,
    state: TaskState,
    result: &Value,
    traceback: Option<&str>,
) {
    let node = &shared.control;
    let id = &msg.headers.id;
    let name = msg.headers.task.as_str();
    if state != TaskState::Retry {
        node.count_processed();
    }
    if let Outcome::Completed(Output::Ran(_, runtime)) = outcome {
        node.metrics.tasks.runtime(name, *runtime);
    }
    match state {
        TaskState::Success => {
            let runtime = match outcome {
                Outcome::Completed(Output::Ran(_, rt)) => *rt,
                _ => Duration::ZERO,
            };
            task_event(node, "task-succeeded", name, || {
                ev::succeeded(id, result, runtime)
            });
        }
        TaskState::Failure => task_event(node, "task-failed", name, || {
            ev::failed(id, result, traceback)
        }),
        TaskState::Retry => task_event(node, "task-retried", name, || {
            ev::failed(id, result, traceback)
        }),
        TaskState::Revoked => {
            let signum = outcome
                .termination()
                .filter(|t| t.reason == TerminateReason::Killed)
                .and_then(|t| t.signal)
                .map(greenpool::KillSignal::number);
            task_event(node, "task-revoked", name, || {
                ev::revoked(id, true, signum, false)
            });
        }
        _ => {}
    }
}

/// A request's message was rejected (the task raised `Reject` and its
/// message was still unacked): `task-rejected` with `requeue`.
pub(crate) fn rejected(shared: &Shared, msg: &TaskMessage, requeue: bool) {
    task_event(&shared.control, "task-rejected", &msg.headers.task, || {
        ev::rejected(&msg.headers.id, requeue)
    });
}

/// Sends task event `kind` of a task named `name` (when task events are
/// on) and counts it in the metrics (always): one place, so that the
/// metrics agree with the events monitors see.
fn task_event(node: &Node, kind: &str, name: &str, fields: impl FnOnce() -> Map<String, Value>) {
    node.metrics.tasks.event(kind, name);
    node.events.task(kind, fields);
}
