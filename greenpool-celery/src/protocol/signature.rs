//! Signatures and the body's embed: callbacks, errbacks, chain and chord.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Celery signature (`celery.canvas.Signature` serialised as a dict),
/// kept whole so that nothing a Python client put in it is lost.
///
/// ```
/// use greenpool_celery::Signature;
/// let s: Signature = serde_json::from_str(
///     r#"{"task": "tasks.mul", "args": [2], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}"#,
/// ).unwrap();
/// assert_eq!(s.task(), Some("tasks.mul"));
/// assert_eq!(s.args().len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Signature(pub Map<String, Value>);

impl Signature {
    /// The task name, if the signature names one.
    pub fn task(&self) -> Option<&str> {
        self.0.get("task").and_then(Value::as_str)
    }

    /// Positional arguments (empty when absent).
    pub fn args(&self) -> &[Value] {
        self.0
            .get("args")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Keyword arguments, if present.
    pub fn kwargs(&self) -> Option<&Map<String, Value>> {
        self.0.get("kwargs").and_then(Value::as_object)
    }

    /// Call options (queue, countdown, …), if present.
    pub fn options(&self) -> Option<&Map<String, Value>> {
        self.0.get("options").and_then(Value::as_object)
    }

    /// Whether the signature ignores the parent's result.
    pub fn immutable(&self) -> bool {
        self.0
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// The third element of a v2 body: what to run after the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Embed {
    /// Signatures applied with the result on success.
    #[serde(default)]
    pub callbacks: Option<Vec<Signature>>,
    /// Signatures applied on failure.
    #[serde(default)]
    pub errbacks: Option<Vec<Signature>>,
    /// The rest of a chain, last task first.
    #[serde(default)]
    pub chain: Option<Vec<Signature>>,
    /// The chord body this task is a header part of.
    #[serde(default)]
    pub chord: Option<Signature>,
}

impl Embed {
    /// Whether the embed asks for any follow-up work.
    pub fn is_empty(&self) -> bool {
        self.callbacks.as_ref().is_none_or(Vec::is_empty)
            && self.errbacks.as_ref().is_none_or(Vec::is_empty)
            && self.chain.as_ref().is_none_or(Vec::is_empty)
            && self.chord.is_none()
    }
}
