//! `revoke` and `terminate`: flag ids as revoked (they never start),
//! store REVOKED, and with `terminate` kill the running ones through the
//! pool's `terminate_job`.

use std::sync::{Arc, PoisonError};

use greenpool::KillSignal;
use serde_json::{json, Value};

use super::node::Node;
use super::table::{Answer, Args};
use crate::backend::TaskState;
use crate::task_error::TaskError;

/// Signal names Celery accepts (with or without `SIG`), and numbers.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
];

/// The number of a signal given as `"SIGKILL"`, `"KILL"` or `9`.
pub(crate) fn signum(signal: Option<&Value>) -> Result<i32, String> {
    match signal {
        None | Some(Value::Null) => Ok(15),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| format!("ValueError('bad signal number {n}')")),
        Some(Value::String(s)) => {
            if let Ok(n) = s.trim().parse::<i32>() {
                return Ok(n);
            }
            let name = s.trim().to_ascii_uppercase();
            let short = name.strip_prefix("SIG").unwrap_or(&name);
            SIGNALS
                .iter()
                .find(|(n, _)| *n == short)
                .map(|(_, num)| *num)
                .ok_or_else(|| {
                    format!("AttributeError(\"module 'signal' has no attribute '{s}'\")")
                })
        }
        Some(other) => Err(format!(
            "TypeError('signal must be a name or number, not {other}')"
        )),
    }
}

/// How the pool kills for signal `n`: KILL (and signals greenpool has no
/// gentler meaning for) at once; TERM, INT, QUIT and USR1 cancel the
/// job's token first (USR1 is the soft time limit's signal: the task sees
/// its token and may clean up) and kill after the pool's grace period.
pub(crate) fn kill_signal(n: i32) -> KillSignal {
    match n {
        15 | 3 | 10 => KillSignal::Term,
        2 => KillSignal::Int,
        9 => KillSignal::Kill,
        n => KillSignal::Other(n),
    }
}

/// The error stored for a revoked task: `TaskRevokedError(reason)`.
pub(crate) fn revoked_error(reason: &str) -> TaskError {
    TaskError::new("TaskRevokedError", reason).with_module("celery.exceptions")
}

/// Revokes `ids`; with `terminate`, kills the running ones with signal
/// `sig`. Returns the ids of held requests that were terminated.
pub(crate) fn revoke_ids(
    node: &Arc<Node>,
    ids: &[String],
    terminate: bool,
    sig: i32,
) -> Vec<String> {
    let mut terminated = Vec::new();
    for id in ids {
        node.revoked.add(id);
        let jobs = if terminate {
            node.requests.jobs_of(id)
        } else {
            Vec::new()
        };
        if terminate && node.requests.holds(id) && !terminated.contains(id) {
            terminated.push(id.clone());
        }
        if jobs.is_empty() {
            // Not running: the revoked flag keeps it from starting; REVOKED
            // is stored now, as Celery's `mark_as_revoked` does.
            store_revoked(node, id);
            continue;
        }
        // Running: its one outcome, REVOKED "terminated", is stored when
        // the job ends.
        tracing::info!("Terminating {id} ({sig})");
        node.terminating
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), sig);
        for job in jobs {
            let pool = node.pool.clone();
            let signal = kill_signal(sig);
            tokio::spawn(async move {
                let r = pool.terminate_job(job, Some(signal)).await;
                tracing::debug!("terminate_job({}) with {signal}: {r:?}", job.as_u64());
            });
        }
    }
    if !terminate {
        tracing::info!("Tasks flagged as revoked: {}", ids.join(", "));
    }
    terminated
}

fn store_revoked(node: &Node, id: &str) {
    if let Some(backend) = node.results_by_id() {
        let meta = crate::backend::ResultMeta::new(
            id,
            TaskState::Revoked,
            revoked_error("revoked").to_json(),
        );
        backend.store(&meta, None);
    }
}

/// `revoke`: `task_id` (one or a list), `terminate`, `signal`.
pub(crate) fn revoke(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let ids = args.list("task_id");
    let terminate = args.flag("terminate");
    let sig = signum(args.get("signal"))?;
    let done = revoke_ids(node, &ids, terminate, sig);
    if terminate {
        return Ok(Some(if done.is_empty() {
            json!({"ok": "terminate: tasks unknown"})
        } else {
            json!({"ok": format!("terminate: {}", done.join(", "))})
        }));
    }
    // Celery prints the Python set of ids into the text.
    let set: Vec<String> = ids.iter().map(|i| crate::repr::repr(&json!(i))).collect();
    let set = if set.is_empty() {
        "set()".to_owned()
    } else {
        format!("{{{}}}", set.join(", "))
    };
    Ok(Some(
        json!({"ok": format!("tasks {set} flagged as revoked")}),
    ))
}

/// `terminate`: `revoke` with `terminate=True`.
pub(crate) fn terminate(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let ids = args.list("task_id");
    let sig = signum(args.get("signal"))?;
    let done = revoke_ids(node, &ids, true, sig);
    Ok(Some(if done.is_empty() {
        json!({"ok": "terminate: tasks unknown"})
    } else {
        json!({"ok": format!("terminate: {}", done.join(", "))})
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signum(Some(&json!("SIGKILL"))), Ok(9));
        assert_eq!(signum(Some(&json!("term"))), Ok(15));
        assert_eq!(signum(Some(&json!(10))), Ok(10));
        assert_eq!(signum(None), Ok(15));
        assert!(signum(Some(&json!("SIGNOPE"))).is_err());
        assert_eq!(kill_signal(9), KillSignal::Kill);
        assert_eq!(kill_signal(10), KillSignal::Term);
    }
}
