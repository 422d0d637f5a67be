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
    /// A task signature, as Python's `signature(task, args, kwargs)`.
    ///
    /// ```
    /// use greenpool_celery::Signature;
    /// use serde_json::json;
    /// let s = Signature::new("tasks.add", vec![json!(2)], Default::default()).set("queue", json!("q"));
    /// assert_eq!(s.task(), Some("tasks.add"));
    /// assert_eq!(s.options().unwrap()["queue"], json!("q"));
    /// assert!(!s.immutable());
    /// ```
    pub fn new(task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let mut m = Map::new();
        m.insert("task".to_owned(), Value::String(task.to_owned()));
        m.insert("args".to_owned(), Value::Array(args));
        m.insert("kwargs".to_owned(), Value::Object(kwargs));
        m.insert("options".to_owned(), Value::Object(Map::new()));
        m.insert("subtask_type".to_owned(), Value::Null);
        m.insert("immutable".to_owned(), Value::Bool(false));
        Signature(m)
    }

    /// An immutable task signature (Python's `.si()`): it ignores the
    /// result of the task before it.
    pub fn si(task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let mut s = Self::new(task, args, kwargs);
        s.0.insert("immutable".to_owned(), Value::Bool(true));
        s
    }

    /// A canvas signature of `kind` over `kwargs`, as Celery writes them.
    fn canvas(task: &str, kind: &str, kwargs: Map<String, Value>) -> Self {
        let mut s = Self::new(task, Vec::new(), kwargs);
        s.0.insert("subtask_type".to_owned(), Value::String(kind.to_owned()));
        s
    }

    fn list(tasks: Vec<Signature>) -> Value {
        Value::Array(tasks.into_iter().map(|t| Value::Object(t.0)).collect())
    }

    /// `chain(*tasks)`: each task gets the result of the one before.
    pub fn chain(tasks: Vec<Signature>) -> Self {
        let mut kw = Map::new();
        kw.insert("tasks".to_owned(), Self::list(tasks));
        Self::canvas("celery.chain", "chain", kw)
    }

    /// `group(*tasks)`: the tasks run in parallel; the result is the list
    /// of theirs.
    pub fn group(tasks: Vec<Signature>) -> Self {
        let mut kw = Map::new();
        kw.insert("tasks".to_owned(), Self::list(tasks));
        Self::canvas("celery.group", "group", kw)
    }

    /// `chord(header, body)`: the header runs as a group; the body gets
    /// the list of its results.
    pub fn chord(header: Vec<Signature>, body: Signature) -> Self {
        let mut kw = Map::new();
        kw.insert("header".to_owned(), Self::list(header));
        kw.insert("body".to_owned(), Value::Object(body.0));
        kw.insert("kwargs".to_owned(), Value::Object(Map::new()));
        Self::canvas("celery.chord", "chord", kw)
    }

    /// Sets call option `key` (`queue`, `countdown`, `task_id`, `link`,
    /// …), as Python's `.set(key=value)`.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        let opts = self
            .0
            .entry("options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Value::Object(o) = opts {
            o.insert(key.to_owned(), value);
        }
        self
    }

    /// `"chain"`, `"group"` or `"chord"` for a canvas; `None` for a task.
    pub fn subtask_type(&self) -> Option<&str> {
        self.0.get("subtask_type").and_then(Value::as_str)
    }

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
