//! Deciding a finished job's outcome: a **pure** function from what the
//! pool reported and the facts of the request to a [`Decision`] naming
//! the state and every write it needs. [`super::settle`] applies it.
//!
//! Nothing here touches the worker: what needs the world (is the id being
//! terminated, was it revoked) is looked up before and passed in as
//! [`Revoked`]. Building the follow-up envelopes reads the clock and
//! draws ids (their ETAs and delivery tags) but writes nothing.

use std::borrow::Cow;
use std::time::Duration;

use greenpool::{Outcome, PanicInfo, TerminateReason, Termination};
use serde_json::{json, Value};

use super::follow_up;
use super::retry::{requeue_envelope, retry_message, Publish};
use super::traceback::traceback_text;
use crate::backend::TaskState;
use crate::broker::Received;
pub(crate) use crate::outcome::{Counter, Event, Report, TaskOutput};
use crate::protocol::{TaskMessage, Timestamp};
use crate::repr::{cut, LOG_NAME_MAX};
use crate::task_error::TaskError;

/// Whether a finished job was revoked by a control command, looked up in
/// the worker before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// Not revoked.
    No,
    /// Killed by `revoke(terminate=True)` with this signal number.
    Terminated(i32),
    /// Revoked before it started (its job ended with `TaskRevokedError`).
    BeforeStart,
}

/// The facts a decision is made from, all borrowed.
pub(crate) struct OutcomeInput<'a> {
    /// The request's message (its args may have been moved to the job).
    pub(crate) msg: &'a TaskMessage,
    /// What the pool reported.
    pub(crate) outcome: &'a Outcome<TaskOutput>,
    /// The message as received (for a retry or a requeue).
    pub(crate) received: &'a Received,
    /// The queue the message came from.
    pub(crate) queue: &'a str,
    /// The task's `max_retries` (`None`: no limit).
    pub(crate) max_retries: Option<u32>,
    /// No result is stored (message header or task option).
    pub(crate) ignore_result: bool,
    /// The message is still unacked (late ack): the decision acks,
    /// requeues or leaves it.
    pub(crate) unacked: bool,
    /// The hard time limit in force, in seconds as given (worker config,
    /// control command or header).
    pub(crate) hard_limit: Option<f64>,
    /// Revoked-by-control facts.
    pub(crate) revoked: Revoked,
    /// The result backend joins chords (Redis does, rpc:// does not): a
    /// chord among the follow-ups can be started.
    pub(crate) joins_chords: bool,
}

/// The state a request ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// SUCCESS.
    Success,
    /// RETRY: the retry message is sent.
    Retry,
    /// REVOKED: terminated, killed, or revoked before it started.
    Revoked,
    /// REVOKED ("expired").
    Expired,
    /// The task raised `Reject`: FAILURE unless `requeue`.
    Reject {
        /// The message goes back to its queue.
        requeue: bool,
    },
    /// FAILURE.
    Failure,
    /// Killed by a shutdown: nothing reported, the message is given back.
    GiveBack,
}

/// The log line of a decision.
#[derive(Debug)]
pub(crate) enum Log<'a> {
    /// `Task n[id] succeeded in …s: result` (info).
    Succeeded(Duration),
    /// `Task n[id] retry: error` (info).
    Retry(&'a TaskError),
    /// `Task n[id] cannot be retried: reason` (error).
    CannotRetry(TaskError),
    /// `Task n[id] raised unexpected: error` (error).
    Unexpected(Cow<'a, TaskError>),
    /// `Task n[id] raised unexpected: error (panic)` (error).
    Panicked(TaskError, &'a PanicInfo),
    /// `Task n[id] hard time limit (…s) exceeded` (error).
    HardTimeLimit(f64),
    /// `Task n[id] terminated` (warn): killed by the pool.
    Killed,
    /// `Task n[id] terminated (signal …)` (warn): by `revoke(terminate=True)`.
    Terminated(i32),
    /// `Discarding revoked task: n[id]` (info).
    DiscardedRevoked,
    /// `Discarding revoked task: n[id] (expired at …)` (info); `None`:
    /// now.
    Expired(Option<Timestamp>),
    /// `Task n[id] rejected (requeue=…): reason` (info).
    Rejected {
        /// Back to the queue.
        requeue: bool,
        /// The `Reject` raised.
        error: &'a TaskError,
    },
    /// `Task n[id] killed by shutdown: …` (warn).
    ShutdownKill(&'a Termination),
}

/// What happens to a message still unacked (late ack); nothing happens
/// to one acked when its job started.
#[derive(Debug, PartialEq)]
pub(crate) enum Fate {
    /// Acked.
    Ack,
    /// Put back on its queue with this envelope.
    Requeue(Box<Publish>),
    /// A requeue was asked for an envelope that cannot be read: logged
    /// and acked (dropped).
    Unrequeueable,
    /// Left unacked: given back when the worker stops.
    Leave,
}

/// A decided outcome: its state and everything to write for it, in the
/// order [`super::settle::apply`] writes it.
#[derive(Debug)]
pub(crate) struct Decision<'a> {
    /// The state the request ends in.
    pub(crate) verdict: Verdict,
    /// The log line.
    pub(crate) log: Log<'a>,
    /// The counter bumped.
    pub(crate) counter: Option<Counter>,
    /// The task event sent.
    pub(crate) event: Event<'a>,
    /// What is reported; `None` when nothing is.
    pub(crate) report: Option<Report>,
    /// The report is stored in the result backend.
    pub(crate) store: bool,
    /// Follow-up messages (links, chain step, link errors, the retry),
    /// sent before the message is acked.
    pub(crate) publish: Vec<Publish>,
    /// Sizes of the chords those messages start (group id, parts), set
    /// in the result backend before they are sent.
    pub(crate) chord_sizes: Vec<(String, usize)>,
    /// Link errors that could not be built: logged, not sent.
    pub(crate) skipped: Vec<TaskError>,
    /// What happens to a still-unacked message.
    pub(crate) fate: Fate,
    /// `task-rejected` with this `requeue` (only for an unacked message).
    pub(crate) rejected: Option<bool>,
}

impl<'a> Decision<'a> {
    /// A decision with `verdict`, `log` and `counter`, reporting `report`
    /// with `event`, nothing sent, the message acked.
    fn new(
        input: &OutcomeInput<'a>,
        verdict: Verdict,
        log: Log<'a>,
        counter: Option<Counter>,
        event: Event<'a>,
        report: Report,
    ) -> Self {
        Decision {
            verdict,
            log,
            counter,
            event,
            report: Some(report),
            store: !input.ignore_result,
            publish: Vec::new(),
            chord_sizes: Vec::new(),
            skipped: Vec::new(),
            fate: Fate::Ack,
            rejected: None,
        }
    }
}

/// True when a job's outcome may be a revoked-before-start one (so the
/// revoked set is looked up only then).
pub(crate) fn may_be_revoked(outcome: &Outcome<TaskOutput>) -> bool {
    matches!(outcome, Outcome::Completed(TaskOutput::Ran(Err(e), _)) if e.exc_type() == "TaskRevokedError")
}

/// Decides the outcome of a finished job from `input`: its state and
/// every write for it. Pure: no I/O, no worker state.
pub(crate) fn decide<'a>(input: &OutcomeInput<'a>) -> Decision<'a> {
    let outcome = input.outcome;
    match input.revoked {
        Revoked::Terminated(sig) => {
            return revoked(
                input,
                Log::Terminated(sig),
                Event::Revoked(Some(sig)),
                "terminated",
            )
        }
        Revoked::BeforeStart => {
            return revoked(
                input,
                Log::DiscardedRevoked,
                Event::Revoked(None),
                "revoked",
            )
        }
        Revoked::No => {}
    }
    match outcome {
        // As before it ran: only the message's `ignore_result` counts.
        Outcome::Completed(TaskOutput::Expired(at)) => {
            expired(input.msg.headers.ignore_result, *at)
        }
        Outcome::Completed(TaskOutput::Ran(Err(e), _)) => match e.reject_requeue() {
            Some(requeue) => reject(input, e, requeue),
            None => match e.retry_countdown() {
                Some(countdown) => retry(input, e, countdown),
                None => {
                    let name = cut(input.msg.headers.display_name(), LOG_NAME_MAX);
                    let tb = e
                        .traceback()
                        .map(str::to_owned)
                        .unwrap_or_else(|| traceback_text(&name, e));
                    failure(input, e.to_json(), tb, Log::Unexpected(Cow::Borrowed(e)))
                }
            },
        },
        Outcome::Completed(TaskOutput::Ran(Ok(v), runtime)) => success(input, v, *runtime),
        Outcome::Panicked(p) => {
            let e = TaskError::runtime_error(format!("task panicked: {}", p.message()));
            let name = cut(input.msg.headers.display_name(), LOG_NAME_MAX);
            let mut tb = traceback_text(&name, &e);
            let bt = p.backtrace_text();
            if !bt.is_empty() {
                tb = format!("{bt}\n{tb}");
            }
            failure(input, e.to_json(), tb, Log::Panicked(e, p))
        }
        Outcome::Terminated(t) => match t.reason {
            TerminateReason::TimeLimit => {
                // The limit in force, not only the message's header.
                let secs = input.hard_limit.unwrap_or(0.0);
                let e = TaskError::new("TimeLimitExceeded", "")
                    .with_args(vec![json!(secs)])
                    .with_module("celery.exceptions");
                let name = cut(input.msg.headers.display_name(), LOG_NAME_MAX);
                let tb = traceback_text(&name, &e);
                failure(input, e.to_json(), tb, Log::HardTimeLimit(secs))
            }
            TerminateReason::Killed => {
                let e = revoked_error("terminated");
                let report = Report {
                    state: TaskState::Revoked,
                    result: e.to_json(),
                    traceback: None,
                };
                Decision::new(
                    input,
                    Verdict::Revoked,
                    Log::Killed,
                    Some(Counter::Revoked),
                    Event::Finished(outcome),
                    report,
                )
            }
            _ => give_back(t),
        },
    }
}

/// The error stored for a revoked task: `TaskRevokedError(reason)`.
fn revoked_error(reason: &str) -> TaskError {
    TaskError::new("TaskRevokedError", reason).with_module("celery.exceptions")
}

/// REVOKED by a control command: terminated, or revoked before start.
fn revoked<'a>(
    input: &OutcomeInput<'a>,
    log: Log<'a>,
    event: Event<'a>,
    reason: &str,
) -> Decision<'a> {
    let report = Report {
        state: TaskState::Revoked,
        result: revoked_error(reason).to_json(),
        traceback: None,
    };
    Decision::new(
        input,
        Verdict::Revoked,
        log,
        Some(Counter::Revoked),
        event,
        report,
    )
}

/// REVOKED ("expired") for a request whose `expires` passed (at `at`,
/// `None`: now): before it ran, or when its job started. `ignore_result`:
/// nothing stored.
pub(crate) fn expired<'a>(ignore_result: bool, at: Option<Timestamp>) -> Decision<'a> {
    Decision {
        verdict: Verdict::Expired,
        log: Log::Expired(at),
        counter: Some(Counter::Revoked),
        event: Event::Expired,
        report: Some(Report {
            state: TaskState::Revoked,
            result: revoked_error("expired").to_json(),
            traceback: None,
        }),
        store: !ignore_result,
        publish: Vec::new(),
        chord_sizes: Vec::new(),
        skipped: Vec::new(),
        fate: Fate::Ack,
        rejected: None,
    }
}

/// Killed by a shutdown: nothing reported, the message left unacked.
fn give_back(t: &Termination) -> Decision<'_> {
    Decision {
        verdict: Verdict::GiveBack,
        log: Log::ShutdownKill(t),
        counter: None,
        event: Event::None,
        report: None,
        store: false,
        publish: Vec::new(),
        chord_sizes: Vec::new(),
        skipped: Vec::new(),
        fate: Fate::Leave,
        rejected: None,
    }
}

/// SUCCESS with the link callbacks and chain step; FAILURE when one of
/// them cannot be built (no link error sent then).
fn success<'a>(input: &OutcomeInput<'a>, v: &Value, runtime: Duration) -> Decision<'a> {
    match follow_up::on_success(input.msg, v, input.joins_chords) {
        Ok(applied) => {
            let report = Report {
                state: TaskState::Success,
                result: v.clone(),
                traceback: None,
            };
            let mut d = Decision::new(
                input,
                Verdict::Success,
                Log::Succeeded(runtime),
                Some(Counter::Succeeded),
                Event::Finished(input.outcome),
                report,
            );
            d.publish = applied.publish;
            d.chord_sizes = applied.chord_sizes;
            d
        }
        Err(e) => {
            let name = cut(input.msg.headers.display_name(), LOG_NAME_MAX);
            let report = Report {
                state: TaskState::Failure,
                result: e.to_json(),
                traceback: Some(traceback_text(&name, &e)),
            };
            Decision::new(
                input,
                Verdict::Failure,
                Log::Unexpected(Cow::Owned(e)),
                Some(Counter::Failed),
                Event::Finished(input.outcome),
                report,
            )
        }
    }
}

/// FAILURE with `result` and `traceback`, link errors sent.
fn failure<'a>(
    input: &OutcomeInput<'a>,
    result: Value,
    traceback: String,
    log: Log<'a>,
) -> Decision<'a> {
    let report = Report {
        state: TaskState::Failure,
        result,
        traceback: Some(traceback),
    };
    let mut d = Decision::new(
        input,
        Verdict::Failure,
        log,
        Some(Counter::Failed),
        Event::Finished(input.outcome),
        report,
    );
    let (applied, skipped) = follow_up::on_failure(input.msg, input.joins_chords);
    d.publish = applied.publish;
    d.chord_sizes = applied.chord_sizes;
    d.skipped = skipped;
    d
}

/// The task asked to be retried after `countdown`: RETRY with the retry
/// message; FAILURE when the retries are used up (`MaxRetriesExceededError`
/// for a bare retry, else the task's own error) or the countdown cannot
/// be reached.
fn retry<'a>(input: &OutcomeInput<'a>, e: &'a TaskError, countdown: Duration) -> Decision<'a> {
    let msg = input.msg;
    let name = msg.headers.display_name();
    let allowed = input.max_retries.is_none_or(|m| msg.headers.retries < m);
    if allowed {
        match retry_message(input.received, countdown) {
            Ok(Some(again)) => {
                let report = Report {
                    state: TaskState::Retry,
                    result: e.to_json(),
                    traceback: Some(traceback_text(name, e)),
                };
                let mut d = Decision::new(
                    input,
                    Verdict::Retry,
                    Log::Retry(e),
                    Some(Counter::Retried),
                    Event::Finished(input.outcome),
                    report,
                );
                d.publish.push(again);
                return d;
            }
            Ok(None) => {}
            Err(reason) => {
                // A countdown no clock can reach: the task fails with why.
                let tb = traceback_text(name, &reason);
                return failure(input, reason.to_json(), tb, Log::CannotRetry(reason));
            }
        }
    }
    let failed = if e.exc_type() == "Retry" {
        Cow::Owned(
            TaskError::new(
                "MaxRetriesExceededError",
                format!(
                    "Can't retry {name}[{}] args:{:?} kwargs:{:?}",
                    cut(&msg.headers.id, LOG_NAME_MAX),
                    msg.headers.argsrepr,
                    msg.headers.kwargsrepr
                ),
            )
            .with_module("celery.exceptions"),
        )
    } else {
        Cow::Borrowed(e)
    };
    let tb = traceback_text(name, &failed);
    failure(input, failed.to_json(), tb, Log::Unexpected(failed))
}

/// The task raised `Reject`, handled as Celery's `Request.on_failure`
/// does: without `requeue` the task fails (FAILURE stored, `task-failed`,
/// no link errors); then a message still unacked is rejected, back at the
/// end of its queue with `requeue` or dropped without, and `task-rejected`
/// is sent. A message acked at the start cannot be rejected any more: no
/// `task-rejected` then, as in Celery.
fn reject<'a>(input: &OutcomeInput<'a>, e: &'a TaskError, requeue: bool) -> Decision<'a> {
    let log = Log::Rejected { requeue, error: e };
    let mut d = if requeue {
        Decision {
            verdict: Verdict::Reject { requeue },
            log,
            counter: None,
            event: Event::None,
            report: None,
            store: false,
            publish: Vec::new(),
            chord_sizes: Vec::new(),
            skipped: Vec::new(),
            fate: Fate::Ack,
            rejected: None,
        }
    } else {
        let name = cut(input.msg.headers.display_name(), LOG_NAME_MAX);
        let tb = e
            .traceback()
            .map(str::to_owned)
            .unwrap_or_else(|| traceback_text(&name, e));
        let report = Report {
            state: TaskState::Failure,
            result: e.to_json(),
            traceback: Some(tb),
        };
        Decision::new(
            input,
            Verdict::Reject { requeue },
            log,
            Some(Counter::Failed),
            Event::Finished(input.outcome),
            report,
        )
    };
    if input.unacked {
        d.rejected = Some(requeue);
        if requeue {
            d.fate = match requeue_envelope(input.received, input.queue) {
                Some(again) => Fate::Requeue(Box::new(again)),
                None => Fate::Unrequeueable,
            };
        }
    }
    d
}

#[cfg(test)]
#[path = "outcome_tests.rs"]
mod tests;
