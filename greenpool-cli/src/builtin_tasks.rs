//! The tasks every `greenpool worker` serves, callable from Python by name.

use greenpool_celery::{TaskContext, TaskError, TaskRegistry};
use serde_json::{json, Map, Number, Value};

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// `x + y` with Python's meaning for numbers, strings and lists.
pub(crate) fn py_add(x: &Value, y: &Value) -> Result<Value, TaskError> {
    match (x, y) {
        (Value::Number(a), Value::Number(b)) => {
            // int + int is exact at any size, as in Python.
            if let Some(s) = crate::py_int::add(a, b) {
                return Ok(Value::Number(s));
            }
            let (Some(fa), Some(fb)) = (a.as_f64(), b.as_f64()) else {
                return Err(TaskError::new(
                    "OverflowError",
                    "int too large to convert to float",
                ));
            };
            Number::from_f64(fa + fb)
                .map(Value::Number)
                .ok_or_else(|| TaskError::new("OverflowError", "result is not a finite number"))
        }
        (Value::String(a), Value::String(b)) => Ok(Value::String(format!("{a}{b}"))),
        (Value::Array(a), Value::Array(b)) => {
            Ok(Value::Array(a.iter().chain(b).cloned().collect()))
        }
        _ => Err(TaskError::type_error(format!(
            "unsupported operand type(s) for +: '{}' and '{}'",
            type_name(x),
            type_name(y)
        ))),
    }
}

/// `greenpool.add`, `greenpool.echo`, `greenpool.sleep`, `greenpool.fail`;
/// `greenpool.retry(times)` (retries at once until its `retries` reaches
/// `times`, then returns it) and `greenpool.reject(requeue)` (acks late and
/// raises Celery's `Reject`; with `requeue` it comes back for ever, as in
/// Celery).
pub(crate) fn registry() -> TaskRegistry {
    let mut tasks = TaskRegistry::new();
    tasks.register(
        "greenpool.add",
        &["x", "y"],
        |_: TaskContext, (x, y): (Value, Value)| async move { py_add(&x, &y) },
    );
    tasks.register_raw(
        "greenpool.echo",
        |_: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>| async move {
            Ok::<_, TaskError>(json!({"args": args, "kwargs": kwargs}))
        },
    );
    tasks.register("greenpool.sleep", &["secs"], |ctx: TaskContext, (secs,): (Value,)| async move {
        let s = secs.as_f64().ok_or_else(|| {
            TaskError::type_error(format!(
                "greenpool.sleep() takes a number of seconds, not {}",
                type_name(&secs)
            ))
        })?;
        let d = greenpool_celery::seconds::duration_from_secs("greenpool.sleep() seconds", s)
            .map_err(|e| TaskError::value_error(e.to_string()))?;
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(secs),
            _ = ctx.token().cancelled() => Err(TaskError::new("SoftTimeLimitExceeded", "sleep cancelled")
                .with_module("celery.exceptions")),
        }
    });
    tasks.register(
        "greenpool.fail",
        &["message"],
        |_: TaskContext, (message,): (Value,)| async move {
            let text = match message {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Err::<(), _>(TaskError::value_error(text))
        },
    );
    tasks
        .register(
            "greenpool.retry",
            &["times"],
            |ctx: TaskContext, (times,): (u32,)| async move {
                if ctx.retries() < times {
                    Err(TaskError::retry(std::time::Duration::ZERO))
                } else {
                    Ok(ctx.retries())
                }
            },
        )
        .max_retries = None;
    tasks
        .register(
            "greenpool.reject",
            &["requeue"],
            |_: TaskContext, (requeue,): (bool,)| async move {
                Err::<(), _>(TaskError::reject("rejected by request", requeue))
            },
        )
        .acks_late = Some(true);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_follows_python() {
        assert_eq!(py_add(&json!(2), &json!(3)).unwrap(), json!(5));
        assert_eq!(py_add(&json!(2), &json!(0.5)).unwrap(), json!(2.5));
        assert_eq!(py_add(&json!("a"), &json!("b")).unwrap(), json!("ab"));
        assert_eq!(py_add(&json!([1]), &json!([2])).unwrap(), json!([1, 2]));
        let big: Value =
            serde_json::from_str("1606938044258990275541962092341162602522202993782792835301376")
                .unwrap();
        assert_eq!(
            py_add(&big, &json!(1)).unwrap().to_string(),
            "1606938044258990275541962092341162602522202993782792835301377"
        );
        assert_eq!(
            py_add(&json!(i64::MAX), &json!(1)).unwrap().to_string(),
            "9223372036854775808"
        );
        let f = py_add(&big, &json!(0.5)).unwrap();
        assert!(f.is_f64());
        assert_eq!(f.as_f64(), Some(2f64.powi(200)));
        let e = py_add(&json!(1), &json!("x")).unwrap_err();
        assert_eq!(e.exc_type(), "TypeError");
        assert!(e.to_string().contains("'int' and 'str'"));
    }
}
