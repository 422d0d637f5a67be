//! Celery's built-in tasks, served by every worker as a Python worker
//! serves them (`celery/app/builtins.py`): `celery.map` and
//! `celery.starmap` (what `task.map(it)` and `task.starmap(it)` send: the
//! task called in place for each item), `celery.chunks` (each chunk
//! starmapped in place; the result is the list of the chunks' results,
//! what the group a Python worker sends would give to `get()`),
//! `celery.accumulate` and `celery.backend_cleanup` (a no-op: results in
//! Redis expire on their own).
//!
//! `celery.chord_unlock` is what a client sends for a chord on a result
//! backend without a join; greenpool joins on Redis, so this task fails
//! with the reason. `celery.group`, `celery.chain` and `celery.chord`
//! as tasks (a canvas sent as one message) fail with the reason too:
//! stock clients send the canvas itself, which greenpool runs.
//!
//! A task registered under one of these names by the user wins.

use std::sync::{Arc, OnceLock, Weak};

use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::registry::{RegisteredTask, TaskRegistry};
use crate::task_error::TaskError;

/// The registry the built-ins call into, set once the worker's registry
/// is shared.
pub(crate) type Late = Arc<OnceLock<Weak<TaskRegistry>>>;

/// The task a `task` signature argument names.
fn named(registry: &Late, task: &Value) -> Result<RegisteredTask, TaskError> {
    let name = task
        .get("task")
        .and_then(Value::as_str)
        .or_else(|| task.as_str())
        .ok_or_else(|| TaskError::type_error(format!("not a task signature: {task}")))?;
    registry
        .get()
        .and_then(Weak::upgrade)
        .and_then(|r| r.get(name).cloned())
        .ok_or_else(|| {
            TaskError::new("NotRegistered", name.to_owned()).with_module("celery.exceptions")
        })
}

fn items(it: &Value) -> Result<&[Value], TaskError> {
    it.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| TaskError::type_error(format!("{it} is not iterable")))
}

/// `task(item)` or `task(*item)` for each item, in place.
async fn map(
    ctx: TaskContext,
    task: RegisteredTask,
    it: &[Value],
    star: bool,
) -> Result<Vec<Value>, TaskError> {
    let mut out = Vec::with_capacity(it.len());
    for item in it {
        let args = match (star, item) {
            (true, Value::Array(a)) => a.clone(),
            (true, other) => {
                return Err(TaskError::type_error(format!(
                    "starmap item {other} is not a sequence"
                )))
            }
            (false, one) => vec![one.clone()],
        };
        out.push(task.call(ctx.clone(), args, Map::new()).await?);
    }
    Ok(out)
}

/// Adds the built-ins to `registry` under the names it does not hold;
/// `late` must be set to the shared registry before any runs.
pub(crate) fn install(registry: &mut TaskRegistry, late: &Late) {
    let taken = |r: &TaskRegistry, n: &str| r.get(n).is_some();
    for (name, star) in [("celery.map", false), ("celery.starmap", true)] {
        if taken(registry, name) {
            continue;
        }
        let late = Arc::clone(late);
        registry.register(
            name,
            &["task", "it"],
            move |ctx: TaskContext, (task, it): (Value, Value)| {
                let late = Arc::clone(&late);
                async move {
                    let t = named(&late, &task)?;
                    map(ctx, t, items(&it)?, star).await
                }
            },
        );
    }
    if !taken(registry, "celery.chunks") {
        let late = Arc::clone(late);
        registry.register(
            "celery.chunks",
            &["task", "it", "n"],
            move |ctx: TaskContext, (task, it, n): (Value, Value, usize)| {
                let late = Arc::clone(&late);
                async move {
                    if n == 0 {
                        return Err(TaskError::value_error("chunks of size 0"));
                    }
                    let t = named(&late, &task)?;
                    let mut out = Vec::new();
                    for part in items(&it)?.chunks(n) {
                        out.push(map(ctx.clone(), t.clone(), part, true).await?);
                    }
                    Ok(out)
                }
            },
        );
    }
    if !taken(registry, "celery.accumulate") {
        registry.register_raw(
            "celery.accumulate",
            |_ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>| async move {
                match kwargs.get("index").filter(|i| !i.is_null()) {
                    None => Ok(Value::Array(args)),
                    Some(i) => {
                        let at = i.as_i64().ok_or_else(|| {
                            TaskError::type_error(format!("list indices must be integers, not {i}"))
                        })?;
                        let len = i64::try_from(args.len()).unwrap_or(i64::MAX);
                        let at = if at < 0 { at.saturating_add(len) } else { at };
                        usize::try_from(at)
                            .ok()
                            .and_then(|at| args.get(at).cloned())
                            .ok_or_else(|| TaskError::new("IndexError", "tuple index out of range"))
                    }
                }
            },
        );
    }
    if !taken(registry, "celery.backend_cleanup") {
        registry.register_raw(
            "celery.backend_cleanup",
            |_ctx: TaskContext, _args: Vec<Value>, _kwargs: Map<String, Value>| async move {
                Ok::<_, TaskError>(Value::Null)
            },
        );
    }
    let refused: [(&str, &str); 4] = [
        (
            "celery.chord_unlock",
            "greenpool joins chords in the Redis result backend as their parts end; \
             celery.chord_unlock is sent for backends without a join, which greenpool does not serve",
        ),
        (
            "celery.group",
            "greenpool runs groups sent as a canvas, not as a celery.group task",
        ),
        (
            "celery.chain",
            "greenpool runs chains sent as a canvas, not as a celery.chain task",
        ),
        (
            "celery.chord",
            "greenpool runs chords sent as a canvas, not as a celery.chord task",
        ),
    ];
    for (name, why) in refused {
        if taken(registry, name) {
            continue;
        }
        registry.register_raw(
            name,
            move |_ctx: TaskContext, _args: Vec<Value>, _kwargs: Map<String, Value>| async move {
                Err::<Value, _>(TaskError::new("NotImplementedError", why))
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Arc<TaskRegistry> {
        let mut r = TaskRegistry::new();
        r.register(
            "t.add",
            &["x", "y"],
            |_c: TaskContext, (x, y): (i64, i64)| async move { Ok::<_, TaskError>(x + y) },
        );
        r.register(
            "t.double",
            &["x"],
            |_c: TaskContext, (x,): (i64,)| async move { Ok::<_, TaskError>(2 * x) },
        );
        let late = Late::default();
        install(&mut r, &late);
        let r = Arc::new(r);
        late.set(Arc::downgrade(&r)).unwrap();
        r
    }

    async fn call(r: &TaskRegistry, name: &str, kwargs: Value) -> Result<Value, TaskError> {
        let kwargs = kwargs.as_object().cloned().unwrap();
        r.get(name)
            .unwrap()
            .call(TaskContext::local(name), Vec::new(), kwargs)
            .await
    }

    #[tokio::test]
    async fn map_starmap_and_chunks_call_the_task_in_place() {
        let r = registry();
        let sig = json!({"task": "t.double", "args": [], "kwargs": {}, "options": {}});
        let out = call(&r, "celery.map", json!({"task": sig, "it": [1, 2, 3]})).await;
        assert_eq!(out.unwrap(), json!([2, 4, 6]));
        let add = json!({"task": "t.add"});
        let out = call(
            &r,
            "celery.starmap",
            json!({"task": add, "it": [[1, 2], [3, 4]]}),
        )
        .await;
        assert_eq!(out.unwrap(), json!([3, 7]));
        let out = call(
            &r,
            "celery.chunks",
            json!({"task": add, "it": [[1, 1], [2, 2], [3, 3]], "n": 2}),
        )
        .await;
        assert_eq!(out.unwrap(), json!([[2, 4], [6]]));
        let e = call(
            &r,
            "celery.map",
            json!({"task": {"task": "t.nope"}, "it": [1]}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exc_type(), "NotRegistered");
        let e = call(&r, "celery.starmap", json!({"task": add, "it": [1]}))
            .await
            .unwrap_err();
        assert_eq!(e.exc_type(), "TypeError");
        let e = call(&r, "celery.chunks", json!({"task": add, "it": [], "n": 0}))
            .await
            .unwrap_err();
        assert_eq!(e.exc_type(), "ValueError");
    }

    #[tokio::test]
    async fn accumulate_cleanup_and_the_refused_ones() {
        let r = registry();
        let acc = r.get("celery.accumulate").unwrap();
        let args = vec![json!(1), json!(2), json!(3)];
        let ctx = || TaskContext::local("celery.accumulate");
        let all = acc.call(ctx(), args.clone(), Map::new()).await.unwrap();
        assert_eq!(all, json!([1, 2, 3]));
        let kw = json!({"index": -1}).as_object().cloned().unwrap();
        assert_eq!(acc.call(ctx(), args.clone(), kw).await.unwrap(), json!(3));
        let kw = json!({"index": 7}).as_object().cloned().unwrap();
        let e = acc.call(ctx(), args, kw).await.unwrap_err();
        assert_eq!(e.exc_type(), "IndexError");
        assert_eq!(
            call(&r, "celery.backend_cleanup", json!({})).await.unwrap(),
            Value::Null
        );
        for name in [
            "celery.chord_unlock",
            "celery.group",
            "celery.chain",
            "celery.chord",
        ] {
            let e = call(&r, name, json!({})).await.unwrap_err();
            assert_eq!(e.exc_type(), "NotImplementedError", "{name}");
        }
    }

    #[test]
    fn a_task_of_the_users_under_a_builtin_name_wins() {
        let mut r = TaskRegistry::new();
        r.register("celery.map", &[], |_c: TaskContext, (): ()| async move {
            Ok::<_, TaskError>("mine")
        });
        install(&mut r, &Late::default());
        let out = futures::executor::block_on(r.get("celery.map").unwrap().call(
            TaskContext::local("celery.map"),
            Vec::new(),
            Map::new(),
        ));
        assert_eq!(out.unwrap(), json!("mine"));
    }
}
