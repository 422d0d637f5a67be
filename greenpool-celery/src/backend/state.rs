//! Task states as the result backend stores them (`celery.states`).

use serde::{Deserialize, Serialize};

/// A task state. A task with nothing stored reads as [`TaskState::Pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum TaskState {
    /// Unknown or waiting (never stored).
    Pending,
    /// Received by a worker.
    Received,
    /// Started (stored only with `track_started`).
    Started,
    /// Finished; the result is the return value.
    Success,
    /// Raised; the result is the serialised exception.
    Failure,
    /// To be retried.
    Retry,
    /// Revoked or expired; not run.
    Revoked,
    /// Rejected by the worker.
    Rejected,
    /// Ignored by the task.
    Ignored,
}

impl TaskState {
    /// The state name on the wire, e.g. `"SUCCESS"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Received => "RECEIVED",
            TaskState::Started => "STARTED",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Retry => "RETRY",
            TaskState::Revoked => "REVOKED",
            TaskState::Rejected => "REJECTED",
            TaskState::Ignored => "IGNORED",
        }
    }

    /// Whether the task has finished: SUCCESS, FAILURE or REVOKED.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
