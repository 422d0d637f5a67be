//! What a finished request comes to, in the words every part of the
//! worker shares: the job's output ([`TaskOutput`]), the report counter it
//! moves ([`Counter`]), the task event it sends ([`Event`]) and the state
//! and result reported ([`Report`]).
//!
//! The request path decides them (`request/outcome.rs`) and the node's
//! recorder counts them (`control/recorder.rs`); both import this file,
//! which imports neither, so remote control does not depend on the
//! request path.

use std::time::Duration;

use greenpool::Outcome;
use serde_json::Value;

use crate::backend::TaskState;
use crate::protocol::Timestamp;
use crate::task_error::TaskError;

/// What a job returns: the task's result and how long it ran, or the
/// expiry it found passed when it got its slot.
#[derive(Debug)]
pub(crate) enum TaskOutput {
    /// The task was called: its result and its run time.
    Ran(Result<Value, TaskError>, Duration),
    /// The request had expired when its job started (at this time).
    Expired(Option<Timestamp>),
}

/// Which counter of the worker's report goes up (counted by the node's
/// recorder, `control/recorder.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// `succeeded`.
    Succeeded,
    /// `failed`.
    Failed,
    /// `revoked`.
    Revoked,
    /// `retried`.
    Retried,
}

/// Which task event (and processed count) a decision sends, through the
/// node's recorder.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// None (given back, or a requeueing reject).
    None,
    /// The event of the reported state (`task-succeeded`, `-failed`,
    /// `-retried` or `-revoked`, by the report's state).
    Finished(&'a Outcome<TaskOutput>),
    /// `task-revoked`, terminated with the signal or revoked before start.
    Revoked(Option<i32>),
    /// `task-revoked` with `expired`.
    Expired,
}

/// The state, result and traceback reported (and stored unless the
/// result is ignored).
#[derive(Debug)]
pub(crate) struct Report {
    /// The state stored.
    pub(crate) state: TaskState,
    /// The result value (or the error's JSON).
    pub(crate) result: Value,
    /// The traceback text.
    pub(crate) traceback: Option<String>,
}
