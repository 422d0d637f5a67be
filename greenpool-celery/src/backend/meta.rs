//! The result meta JSON stored at `celery-task-meta-<id>`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::TaskState;
use crate::protocol::Timestamp;

/// A task's stored state, in the key order Celery writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// The state.
    pub status: TaskState,
    /// Return value (SUCCESS) or serialised exception (FAILURE, REVOKED).
    #[serde(default)]
    pub result: Value,
    /// Traceback text of a failure.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Results of subtasks (always empty here).
    #[serde(default)]
    pub children: Vec<Value>,
    /// When the task became ready; null otherwise.
    #[serde(default)]
    pub date_done: Option<Timestamp>,
    /// Group the task belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Task that sent this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Task name (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Positional arguments (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<Value>>,
    /// Keyword arguments (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<serde_json::Map<String, Value>>,
    /// Node name of the worker (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Retries so far (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Queue (routing key) the request came from (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The task id.
    pub task_id: String,
}

impl ResultMeta {
    /// A meta for `task_id` in `status`; `date_done` is now for ready
    /// states, as Celery does.
    pub fn new(task_id: &str, status: TaskState, result: Value) -> Self {
        ResultMeta {
            status,
            result,
            traceback: None,
            children: Vec::new(),
            date_done: status.is_ready().then(Timestamp::now),
            group_id: None,
            parent_id: None,
            name: None,
            args: None,
            kwargs: None,
            worker: None,
            retries: None,
            queue: None,
            task_id: task_id.to_owned(),
        }
    }
}

/// The result key of a task.
pub fn result_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}
