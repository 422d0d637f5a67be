//! Tasks by name: async Rust functions whose arguments are decoded from
//! Celery's positional args and kwargs through serde.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::task_error::TaskError;

/// The boxed future a registered task returns.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send + 'static>>;

/// A type-erased task: called with the context, args and kwargs. It may be
/// called concurrently from many jobs; a panic inside it (or its future)
/// becomes a FAILURE with `RuntimeError`.
pub type TaskFn =
    Arc<dyn Fn(TaskContext, Vec<Value>, Map<String, Value>) -> TaskFuture + Send + Sync>;

/// Per-task settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOptions {
    /// Ack after the task ends instead of when it starts; `None` follows
    /// the worker's setting.
    pub acks_late: Option<bool>,
    /// Never store results of this task.
    pub ignore_result: bool,
    /// Retries allowed through [`TaskError::retry`] (Celery's default 3);
    /// `None` allows any number.
    pub max_retries: Option<u32>,
    /// Rate limit of this task, as Celery writes it (`"10/s"`, `"100/m"`,
    /// `"1000/h"`); `None` for no limit. `rate_limit` commands override it.
    pub rate_limit: Option<String>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            acks_late: None,
            ignore_result: false,
            max_retries: Some(3),
            rate_limit: None,
        }
    }
}

/// A registered task.
#[derive(Clone)]
pub struct RegisteredTask {
    pub(crate) call: TaskFn,
    /// The task's settings.
    pub options: TaskOptions,
}

impl fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredTask")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RegisteredTask {
    /// Calls the task.
    pub fn call(
        &self,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> TaskFuture {
        (self.call)(ctx, args, kwargs)
    }
}

/// The tasks a worker can run, by name.
///
/// ```
/// use greenpool_celery::{TaskContext, TaskError, TaskRegistry};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut tasks = TaskRegistry::new();
/// tasks.register("tasks.add", &["x", "y"], |_ctx: TaskContext, (x, y): (i64, i64)| async move {
///     Ok::<_, TaskError>(x + y)
/// });
/// let add = tasks.get("tasks.add").unwrap();
/// // add(2, y=3)
/// let kwargs = serde_json::json!({"y": 3}).as_object().unwrap().clone();
/// let out = add.call(TaskContext::local("tasks.add"), vec![2.into()], kwargs).await;
/// assert_eq!(out.unwrap(), serde_json::json!(5));
/// // add("a", 3): a TypeError, as Python would raise
/// let err = add.call(TaskContext::local("tasks.add"), vec!["a".into(), 3.into()], Default::default())
///     .await
///     .unwrap_err();
/// assert_eq!(err.exc_type(), "TypeError");
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TaskRegistry {
    tasks: HashMap<String, RegisteredTask>,
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` under `name`. `params` names the parameters in order,
    /// so that kwargs can fill them as in Python (`add(2, y=3)`); the
    /// merged positional list is then decoded into `P`, usually a tuple
    /// such as `(i64, String)` (use `Option<T>` for optional trailing
    /// parameters). Arguments that do not fit end as a FAILURE with
    /// `TypeError`. A later registration under the same name replaces the
    /// earlier one. Returns the task's options for adjusting.
    pub fn register<P, F, Fut, R>(&mut self, name: &str, params: &[&str], f: F) -> &mut TaskOptions
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
        R: Serialize + 'static,
    {
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        let task_name = name.to_owned();
        let f = Arc::new(f);
        let call: TaskFn = Arc::new(move |ctx, args, kwargs| {
            let decoded = bind(&task_name, &params, args, kwargs);
            let f = Arc::clone(&f);
            Box::pin(async move {
                let p: P = decoded?;
                let out = f(ctx, p).await?;
                encode_result(out)
            })
        });
        self.insert(name, call)
    }

    /// Registers a task that takes the raw positional args and kwargs, for
    /// Python signatures like `f(*args, **kwargs)`.
    pub fn register_raw<F, Fut, R>(&mut self, name: &str, f: F) -> &mut TaskOptions
    where
        F: Fn(TaskContext, Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
        R: Serialize + 'static,
    {
        let call: TaskFn = Arc::new(move |ctx, args, kwargs| {
            let fut = f(ctx, args, kwargs);
            Box::pin(async move { encode_result(fut.await?) })
        });
        self.insert(name, call)
    }

    fn insert(&mut self, name: &str, call: TaskFn) -> &mut TaskOptions {
        let task = RegisteredTask {
            call,
            options: TaskOptions::default(),
        };
        let slot = self
            .tasks
            .entry(name.to_owned())
            .or_insert_with(|| task.clone());
        *slot = task;
        &mut slot.options
    }

    /// The task registered under `name`.
    pub fn get(&self, name: &str) -> Option<&RegisteredTask> {
        self.tasks.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

fn encode_result<R: Serialize>(out: R) -> Result<Value, TaskError> {
    serde_json::to_value(out).map_err(|e| {
        TaskError::new(
            "EncodeError",
            format!("cannot serialise the result as JSON: {e}"),
        )
        .with_module("kombu.exceptions")
    })
}

/// Merges kwargs into the positional list by parameter name, as Python
/// binds a call, then decodes the list into `P`.
fn bind<P: DeserializeOwned>(
    name: &str,
    params: &[String],
    mut args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<P, TaskError> {
    if !params.is_empty() && args.len() > params.len() {
        return Err(TaskError::type_error(format!(
            "{name}() takes {} positional arguments but {} were given",
            params.len(),
            args.len()
        )));
    }
    let given = args.len();
    let mut filled: Vec<bool> = vec![true; given];
    for (key, value) in kwargs {
        let Some(pos) = params.iter().position(|p| *p == key) else {
            return Err(TaskError::type_error(format!(
                "{name}() got an unexpected keyword argument '{key}'"
            )));
        };
        if pos < given {
            return Err(TaskError::type_error(format!(
                "{name}() got multiple values for argument '{key}'"
            )));
        }
        if args.len() <= pos {
            args.resize(pos + 1, Value::Null);
            filled.resize(pos + 1, false);
        }
        args[pos] = value;
        filled[pos] = true;
    }
    // Trailing parameters nobody gave read as null, so `Option` fits them.
    let missing: Vec<&str> = params
        .iter()
        .enumerate()
        .filter(|(i, _)| !filled.get(*i).copied().unwrap_or(false))
        .map(|(_, p)| p.as_str())
        .collect();
    if args.len() < params.len() {
        args.resize(params.len(), Value::Null);
    }
    let empty = args.is_empty();
    let decoded = serde_json::from_value(Value::Array(args));
    // `()` reads from null, not from an empty list.
    let decoded = match decoded {
        Err(_) if empty => serde_json::from_value(Value::Null),
        other => other,
    };
    decoded.map_err(|e| {
        if missing.is_empty() {
            TaskError::type_error(format!("{name}() got arguments of the wrong type: {e}"))
        } else {
            TaskError::type_error(format!(
                "{name}() missing required argument(s): {} ({e})",
                missing
                    .iter()
                    .map(|m| format!("'{m}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn binds_like_python() {
        let p = params(&["x", "y"]);
        let ok: (i64, i64) = bind("add", &p, vec![json!(1), json!(2)], Map::new()).unwrap();
        assert_eq!(ok, (1, 2));
        let ok: (i64, i64) = bind("add", &p, vec![json!(1)], kw(json!({"y": 5}))).unwrap();
        assert_eq!(ok, (1, 5));
        let ok: (i64, i64) = bind("add", &p, vec![], kw(json!({"y": 5, "x": 4}))).unwrap();
        assert_eq!(ok, (4, 5));
        let ok: (i64, Option<i64>) = bind("add", &p, vec![json!(1)], Map::new()).unwrap();
        assert_eq!(ok, (1, None));
    }

    #[test]
    fn mismatches_are_type_errors() {
        let p = params(&["x", "y"]);
        let cases: Vec<(Vec<Value>, Value, &str)> = vec![
            (
                vec![json!(1), json!(2), json!(3)],
                json!({}),
                "takes 2 positional arguments but 3",
            ),
            (
                vec![json!(1)],
                json!({"z": 1}),
                "unexpected keyword argument 'z'",
            ),
            (
                vec![json!(1)],
                json!({"x": 1}),
                "multiple values for argument 'x'",
            ),
            (
                vec![json!(1)],
                json!({}),
                "missing required argument(s): 'y'",
            ),
            (vec![json!("a"), json!(2)], json!({}), "wrong type"),
        ];
        for (args, kwargs, want) in cases {
            let e = bind::<(i64, i64)>("add", &p, args.clone(), kw(kwargs)).unwrap_err();
            assert_eq!(e.exc_type(), "TypeError");
            let msg = e.args()[0].as_str().unwrap().to_owned();
            assert!(msg.contains(want), "{args:?}: {msg}");
        }
    }
}
