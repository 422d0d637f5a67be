//! Settling a finished job: the revoked facts looked up, the outcome
//! decided ([`super::outcome::decide`]), and the decision applied by
//! [`apply`], the one place that writes a request's end: the log line,
//! follow-up messages, the counts and task event (handed to the node's
//! recorder, `control/recorder.rs`, in one call), the result store, the
//! requeue or the ack.

use std::sync::Arc;

use greenpool::Outcome;
use tokio::sync::OwnedSemaphorePermit;

use super::outcome::{
    decide, may_be_revoked, Decision, Fate, Log, OutcomeInput, Revoked, TaskOutput,
};
use crate::broker::Received;
use crate::control::hooks::Listed;
use crate::protocol::{TaskMessage, Timestamp};
use crate::repr::{cut, LOG_NAME_MAX, LOG_REPR_MAX};
use crate::worker::Shared;

/// A request whose job is in the pool: what its outcome callback needs.
pub(super) struct InFlight {
    /// The worker.
    pub(super) shared: Arc<Shared>,
    /// The message (its args moved to the job unless `result_extended`).
    pub(super) msg: Box<TaskMessage>,
    /// The message as received, shared with the listing.
    pub(super) received: Arc<Received>,
    /// The queue the message came from.
    pub(super) queue: String,
    /// The task's `max_retries`.
    pub(super) max_retries: Option<u32>,
    /// No result is stored.
    pub(super) ignore_result: bool,
    /// The delivery tag of a late-ack request (acked here, at the end).
    pub(super) late_tag: Option<String>,
    /// The hard time limit in force, in seconds as given.
    pub(super) hard_limit: Option<f64>,
    /// The prefetch permit of a late-ack request, held until its end.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// The request's entry in the listing, removed when dropped.
    pub(super) listed: Arc<Listed>,
    /// The task's span.
    pub(super) span: tracing::Span,
}

impl InFlight {
    /// The job ended with `outcome`: decided and applied; then the permit
    /// and the listing entry go.
    pub(super) fn settle(self, outcome: &Outcome<TaskOutput>) {
        let _in_task = self.span.enter();
        let shared = &*self.shared;
        let msg = &*self.msg;
        let input = OutcomeInput {
            msg,
            outcome,
            received: &self.received,
            queue: &self.queue,
            max_retries: self.max_retries,
            ignore_result: self.ignore_result,
            unacked: self.late_tag.is_some(),
            hard_limit: self.hard_limit,
            revoked: look_up_revoked(shared, msg, outcome),
            joins_chords: shared.joins_chords(),
        };
        apply(shared, msg, self.late_tag.as_deref(), decide(&input));
        drop(self.permit);
        drop(self.listed);
    }
}

/// Whether the job was revoked by a control command: the terminate
/// entry of its id is taken (always), and the revoked set is read when
/// the job ended with `TaskRevokedError`.
fn look_up_revoked(shared: &Shared, msg: &TaskMessage, outcome: &Outcome<TaskOutput>) -> Revoked {
    let id = &msg.headers.id;
    if let Some(sig) = crate::control::hooks::take_terminating(&shared.control, id) {
        Revoked::Terminated(sig)
    } else if may_be_revoked(outcome) && shared.control.revoked.contains(id) {
        Revoked::BeforeStart
    } else {
        Revoked::No
    }
}

/// Writes decision `d` for `msg`: the log line, the follow-ups, the
/// counter and the task event (one call to the recorder), the result,
/// then the message's fate when it is still unacked (`unacked`: its
/// delivery tag) and `task-rejected`.
pub(super) fn apply(shared: &Shared, msg: &TaskMessage, unacked: Option<&str>, d: Decision<'_>) {
    let Decision {
        log,
        counter,
        event,
        report,
        store,
        publish,
        chord_sizes,
        skipped,
        fate,
        rejected,
        verdict,
    } = d;
    tracing::trace!(?verdict, "settling");
    write_log(msg, &log, report.as_ref().map(|r| &r.result));
    for e in &skipped {
        tracing::error!(
            "cannot send a link error of {}[{}]: {}",
            cut(msg.headers.display_name(), LOG_NAME_MAX),
            cut(&msg.headers.id, LOG_NAME_MAX),
            cut(&e.to_string(), LOG_REPR_MAX)
        );
    }
    for (group, size) in chord_sizes {
        shared.set_chord_size(&group, size);
    }
    for p in publish {
        shared.acks.push(p, unacked);
    }
    let recorder = &shared.control.recorder;
    recorder.settled(msg, counter, &event, report.as_ref());
    if let Some(r) = report {
        // A chord part joins whether or not its result is stored, as in
        // Celery; the batcher joins after the batch's results are stored
        // and before its acks.
        shared.join_chord(msg, r.state, &r.result, unacked);
        if store {
            shared.store(msg, r.state, r.result, r.traceback);
        }
    }
    let Some(tag) = unacked else { return };
    match fate {
        Fate::Ack => shared.ack(tag),
        Fate::Requeue(p) => shared.requeue(tag, *p),
        Fate::Unrequeueable => {
            tracing::error!(
                "Task {}[{}]: cannot requeue an unreadable message; it is dropped",
                cut(msg.headers.display_name(), LOG_NAME_MAX),
                cut(&msg.headers.id, LOG_NAME_MAX)
            );
            shared.ack(tag);
        }
        Fate::Leave => {}
    }
    if let Some(requeue) = rejected {
        recorder.rejected(msg, requeue);
    }
}

/// Writes the log line of a decision; `result` is the reported result.
fn write_log(msg: &TaskMessage, log: &Log<'_>, result: Option<&serde_json::Value>) {
    let name = cut(msg.headers.display_name(), LOG_NAME_MAX);
    let id = cut(&msg.headers.id, LOG_NAME_MAX);
    match log {
        Log::Succeeded(runtime) => {
            if let (Some(result), true) = (result, tracing::enabled!(tracing::Level::INFO)) {
                tracing::info!(
                    "Task {name}[{id}] succeeded in {:.6}s: {}",
                    runtime.as_secs_f64(),
                    cut(&crate::repr::repr(result), LOG_REPR_MAX)
                );
            }
        }
        Log::Retry(e) => tracing::info!(
            "Task {}[{id}] retry: {}",
            msg.headers.display_name(),
            cut(&e.to_string(), LOG_REPR_MAX)
        ),
        Log::CannotRetry(reason) => tracing::error!(
            "Task {}[{id}] cannot be retried: {reason}",
            msg.headers.display_name()
        ),
        Log::Unexpected(e) => tracing::error!(
            "Task {name}[{id}] raised unexpected: {}",
            cut(&e.to_string(), LOG_REPR_MAX)
        ),
        Log::Panicked(e, p) => tracing::error!(
            "Task {name}[{id}] raised unexpected: {}",
            cut(&format!("{e} ({p})"), LOG_REPR_MAX)
        ),
        Log::HardTimeLimit(secs) => {
            tracing::error!("Task {name}[{id}] hard time limit ({secs}s) exceeded")
        }
        Log::Killed => tracing::warn!("Task {name}[{id}] terminated"),
        Log::Terminated(sig) => tracing::warn!(
            "Task {}[{}] terminated (signal {sig})",
            msg.headers.task,
            msg.headers.id
        ),
        Log::DiscardedRevoked => tracing::info!(
            "Discarding revoked task: {}[{}]",
            msg.headers.task,
            msg.headers.id
        ),
        Log::Expired(at) => tracing::info!(
            "Discarding revoked task: {}[{}] (expired at {})",
            cut(&msg.headers.task, LOG_NAME_MAX),
            id,
            at.unwrap_or_else(Timestamp::now)
        ),
        Log::Rejected { requeue, error } => tracing::info!(
            "Task {name}[{id}] rejected (requeue={requeue}): {}",
            cut(&error.to_string(), LOG_REPR_MAX)
        ),
        Log::ShutdownKill(t) => tracing::warn!("Task {name}[{id}] killed by shutdown: {t}"),
    }
}
