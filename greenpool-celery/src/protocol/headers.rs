//! Typed task headers of protocol v2.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lenient::null_default;
use super::time::Timestamp;
use super::timelimit::TimeLimit;

/// The headers of a v2 task message. Unknown keys are ignored when reading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskHeaders {
    /// Producer language, `"py"` for Python clients.
    #[serde(default)]
    pub lang: Option<String>,
    /// Registered task name.
    #[serde(default, deserialize_with = "null_default")]
    pub task: String,
    /// Task id (a UUID string).
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    /// Id of the first task of the workflow.
    #[serde(default)]
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Group id.
    #[serde(default)]
    pub group: Option<String>,
    /// Position in the group.
    #[serde(default)]
    pub group_index: Option<i64>,
    /// Display name used in logs instead of `task`.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Run no earlier than this.
    #[serde(default)]
    pub eta: Option<Timestamp>,
    /// Revoke instead of running after this.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// How often the task was retried.
    #[serde(default, deserialize_with = "null_default")]
    pub retries: u32,
    /// `[hard, soft]` limits in seconds.
    #[serde(default)]
    pub timelimit: TimeLimit,
    /// `repr()` of the positional arguments, for logs.
    #[serde(default)]
    pub argsrepr: Option<String>,
    /// `repr()` of the keyword arguments, for logs.
    #[serde(default)]
    pub kwargsrepr: Option<String>,
    /// Producer node name.
    #[serde(default)]
    pub origin: Option<String>,
    /// If true, no result is stored.
    #[serde(default, deserialize_with = "null_default")]
    pub ignore_result: bool,
    /// How often the task was replaced (Celery 5).
    #[serde(default, deserialize_with = "null_default")]
    pub replaced_task_nesting: u32,
    /// Stamping (Celery 5.3+).
    #[serde(default)]
    pub stamped_headers: Option<Vec<String>>,
    /// Stamp values (Celery 5.3+).
    #[serde(default, deserialize_with = "null_default")]
    pub stamps: Map<String, Value>,
}

impl TaskHeaders {
    /// The headers that can still be read from `text` when it does not
    /// fit the typed fields (a header of the wrong type): the string
    /// headers that name the task, and `ignore_result`. Used to report
    /// the failure under the right task id.
    pub(crate) fn salvage(text: &str) -> Self {
        let Ok(map) = serde_json::from_str::<Map<String, Value>>(text) else {
            return TaskHeaders::default();
        };
        let string = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        TaskHeaders {
            lang: string("lang"),
            task: string("task").unwrap_or_default(),
            id: string("id").unwrap_or_default(),
            root_id: string("root_id"),
            parent_id: string("parent_id"),
            group: string("group"),
            shadow: string("shadow"),
            ignore_result: map
                .get("ignore_result")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..TaskHeaders::default()
        }
    }

    /// The name to show in logs: `shadow` if set, else `task`.
    pub fn display_name(&self) -> &str {
        self.shadow.as_deref().unwrap_or(&self.task)
    }
}
