//! The error a task returns: a Python exception type, its arguments and
//! an optional traceback, stored the way Celery's JSON serializer stores
//! exceptions so that Python rebuilds the same type.

use std::time::Duration;

use serde_json::Value;

/// A task failure, seen by Python clients as an exception of type
/// `exc_module.exc_type` raised with `args`.
///
/// Builtin exception types (`ValueError`, `TypeError`, `KeyError`, …) are
/// rebuilt as themselves by `AsyncResult.get()`; any other name becomes a
/// class of that name created on the fly by Celery.
///
/// ```
/// use greenpool_celery::TaskError;
/// let e = TaskError::value_error("bad input");
/// assert_eq!(e.exc_type(), "ValueError");
/// assert_eq!(e.exc_module(), "builtins");
/// assert_eq!(e.to_string(), "ValueError('bad input')");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    exc_type: String,
    exc_module: String,
    args: Vec<Value>,
    traceback: Option<String>,
    retry: Option<Duration>,
    reject: Option<bool>,
}

impl TaskError {
    /// An exception of builtin type `exc_type` with one message argument.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            exc_type: exc_type.into(),
            exc_module: "builtins".to_owned(),
            args: vec![Value::String(message.into())],
            traceback: None,
            retry: None,
            reject: None,
        }
    }

    /// Asks for the task to be retried after `countdown`, as Celery's
    /// `self.retry(countdown=...)`: the worker stores RETRY and sends the
    /// request again with `retries + 1`. Once the task's `max_retries` are
    /// used up it fails with `MaxRetriesExceededError`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = greenpool_celery::TaskError::retry(Duration::from_secs(5));
    /// assert_eq!(e.exc_type(), "Retry");
    /// assert_eq!(e.retry_countdown(), Some(Duration::from_secs(5)));
    /// ```
    pub fn retry(countdown: Duration) -> Self {
        Self::new("Retry", format!("Retry in {}s", countdown.as_secs_f64()))
            .with_module("celery.exceptions")
            .retry_after(countdown)
    }

    /// Makes this error retryable after `countdown`; once the retries are
    /// used up the task fails with this error (Celery's `retry(exc=...)`).
    pub fn retry_after(mut self, countdown: Duration) -> Self {
        self.retry = Some(countdown);
        self
    }

    /// The countdown of a requested retry.
    pub fn retry_countdown(&self) -> Option<Duration> {
        self.retry
    }

    /// Asks the worker to reject the task's message, as Celery's `raise
    /// Reject(reason, requeue)`. For a task that acks late (its message is
    /// still unacked) the worker rejects the message, putting it back at
    /// the end of its queue with `requeue`, and sends `task-rejected`;
    /// without `requeue` the task also fails with this error (FAILURE
    /// stored, `task-failed` sent). For a task acked early only the
    /// failure remains, as in Celery.
    ///
    /// ```
    /// let e = greenpool_celery::TaskError::reject("bad input", false);
    /// assert_eq!(e.exc_type(), "Reject");
    /// assert_eq!(e.reject_requeue(), Some(false));
    /// assert_eq!(e.to_string(), "Reject('bad input', False)");
    /// ```
    pub fn reject(reason: impl Into<String>, requeue: bool) -> Self {
        let mut e = Self::new("Reject", reason).with_module("celery.exceptions");
        e.args.push(Value::Bool(requeue));
        e.reject = Some(requeue);
        e
    }

    /// `Some(requeue)` when this error asks for the message to be
    /// rejected ([`TaskError::reject`]).
    pub fn reject_requeue(&self) -> Option<bool> {
        self.reject
    }

    /// `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::new("ValueError", message)
    }

    /// `TypeError(message)`.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::new("TypeError", message)
    }

    /// `RuntimeError(message)`.
    pub fn runtime_error(message: impl Into<String>) -> Self {
        Self::new("RuntimeError", message)
    }

    /// Sets the module the type lives in (default `"builtins"`).
    pub fn with_module(mut self, module: impl Into<String>) -> Self {
        self.exc_module = module.into();
        self
    }

    /// Replaces the exception arguments (`exc.args` in Python).
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Sets the traceback text stored with the failure.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// The exception class name (`__qualname__`).
    pub fn exc_type(&self) -> &str {
        &self.exc_type
    }

    /// The exception's module.
    pub fn exc_module(&self) -> &str {
        &self.exc_module
    }

    /// The exception arguments.
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// The traceback text, if any.
    pub fn traceback(&self) -> Option<&str> {
        self.traceback.as_deref()
    }

    /// The JSON Celery stores as the result of a FAILURE:
    /// `{"exc_type", "exc_message" (the args list), "exc_module"}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "exc_type": self.exc_type,
            "exc_message": self.args,
            "exc_module": self.exc_module,
        })
    }

    /// Reads an exception stored by Celery (`exc_message` may be a list or
    /// a single value). Returns `None` for anything else.
    pub fn from_json(v: &Value) -> Option<Self> {
        let exc_type = v.get("exc_type")?.as_str()?.to_owned();
        let exc_module = v
            .get("exc_module")
            .and_then(Value::as_str)
            .unwrap_or("builtins")
            .to_owned();
        let args = match v.get("exc_message") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other.clone()],
        };
        Some(TaskError {
            exc_type,
            exc_module,
            args,
            traceback: None,
            retry: None,
            reject: None,
        })
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<String> = self.args.iter().map(crate::repr::repr).collect();
        write!(f, "{}({})", self.exc_type, args.join(", "))
    }
}

impl std::error::Error for TaskError {}
