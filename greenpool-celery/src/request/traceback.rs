//! The traceback text stored with a failure, in Python's shape.

use serde_json::Value;

use crate::task_error::TaskError;

/// A traceback text in Python's shape, so clients that print
/// `result.traceback` see where the failure came from.
pub(crate) fn traceback_text(name: &str, e: &TaskError) -> String {
    let msg: Vec<String> = e
        .args()
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let module = match e.exc_module() {
        "builtins" => String::new(),
        m => format!("{m}."),
    };
    format!(
        "Traceback (most recent call last):\n  File \"<greenpool task {name}>\", in run\n{module}{}: {}\n",
        e.exc_type(),
        msg.join(", ")
    )
}
