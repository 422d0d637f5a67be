//! The requests a worker holds, by phase: reserved (received, waiting
//! for a slot or a rate-limit token), scheduled (waiting for an ETA) and
//! active (running in the pool), as `inspect reserved/scheduled/active`
//! and `query_task` list them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use greenpool::JobId;
use serde_json::{json, Value};

use crate::protocol::{TaskMessage, Timestamp};

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    /// Received, not yet running.
    Reserved,
    /// Waiting on the timer for its ETA.
    Scheduled,
    /// Running as the pool job `job` since `since` (unix seconds).
    Active { job: JobId, since: f64 },
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Reserved => "reserved",
            Phase::Scheduled => "scheduled",
            Phase::Active { .. } => "active",
        }
    }
}

/// One held request: what `Request.info()` shows, and its phase.
#[derive(Debug)]
struct Held {
    id: String,
    name: String,
    args: Value,
    kwargs: Value,
    exchange: String,
    routing_key: String,
    priority: u8,
    redelivered: bool,
    eta: Option<Timestamp>,
    phase: Phase,
}

impl Held {
    /// Celery's `Request.info()`.
    fn info(&self, hostname: &str) -> Value {
        let (time_start, worker_pid, acknowledged) = match self.phase {
            Phase::Active { job, since } => (json!(since), json!(job.as_u64()), true),
            _ => (Value::Null, Value::Null, false),
        };
        json!({
            "id": self.id,
            "name": self.name,
            "args": self.args,
            "kwargs": self.kwargs,
            "type": self.name,
            "hostname": hostname,
            "time_start": time_start,
            "acknowledged": acknowledged,
            "delivery_info": {
                "exchange": self.exchange,
                "routing_key": self.routing_key,
                "priority": self.priority,
                "redelivered": self.redelivered,
            },
            "worker_pid": worker_pid,
        })
    }
}

/// The registry of held requests, keyed by an entry number (a task id may
/// arrive twice).
#[derive(Debug, Default)]
pub(crate) struct Requests {
    held: Mutex<HashMap<u64, Held>>,
    next: AtomicU64,
}

/// Keeps a request listed; dropping it removes the entry (when the job
/// ends, or when the request leaves before it runs).
#[derive(Debug)]
#[must_use = "dropping the guard unlists the request"]
pub(crate) struct Listed {
    requests: Arc<Requests>,
    key: u64,
}

impl Listed {
    /// Moves the request to `phase`.
    pub(crate) fn set_phase(&self, phase: Phase) {
        if let Some(h) = self.requests.lock().get_mut(&self.key) {
            h.phase = phase;
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.key);
    }
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `msg` as reserved until the returned guard drops.
    pub(crate) fn insert(self: &Arc<Self>, msg: &TaskMessage) -> Listed {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let info = &msg.properties.delivery_info;
        let held = Held {
            id: msg.headers.id.clone(),
            name: msg.headers.task.clone(),
            args: Value::Array(msg.args.clone()),
            kwargs: Value::Object(msg.kwargs.clone()),
            exchange: info.exchange.clone(),
            routing_key: info.routing_key.clone(),
            priority: msg.properties.priority.unwrap_or(0),
            redelivered: info.redelivered.unwrap_or(false),
            eta: msg.headers.eta,
            phase: Phase::Reserved,
        };
        self.lock().insert(key, held);
        Listed {
            requests: Arc::clone(self),
            key,
        }
    }

    /// `Request.info()` of every request in phases matching `pick`.
    fn infos(&self, hostname: &str, pick: impl Fn(Phase) -> bool) -> Vec<Value> {
        self.lock()
            .values()
            .filter(|h| pick(h.phase))
            .map(|h| h.info(hostname))
            .collect()
    }

    /// `inspect active`.
    pub(crate) fn active(&self, hostname: &str) -> Vec<Value> {
        self.infos(hostname, |p| matches!(p, Phase::Active { .. }))
    }

    /// `inspect reserved`: received, neither scheduled nor running.
    pub(crate) fn reserved(&self, hostname: &str) -> Vec<Value> {
        self.infos(hostname, |p| p == Phase::Reserved)
    }

    /// `inspect scheduled`: `{"eta", "priority": 6, "request"}` each.
    pub(crate) fn scheduled(&self, hostname: &str) -> Vec<Value> {
        self.lock()
            .values()
            .filter(|h| h.phase == Phase::Scheduled)
            .map(|h| {
                json!({
                    "eta": h.eta.map(|t| t.to_string()),
                    "priority": 6,
                    "request": h.info(hostname),
                })
            })
            .collect()
    }

    /// `query_task`: `{id: [phase, info]}` for the held ones of `ids`.
    pub(crate) fn query(&self, hostname: &str, ids: &[String]) -> serde_json::Map<String, Value> {
        self.lock()
            .values()
            .filter(|h| ids.contains(&h.id))
            .map(|h| (h.id.clone(), json!([h.phase.name(), h.info(hostname)])))
            .collect()
    }

    /// The pool jobs running task `id`.
    pub(crate) fn jobs_of(&self, id: &str) -> Vec<JobId> {
        self.lock()
            .values()
            .filter(|h| h.id == id)
            .filter_map(|h| match h.phase {
                Phase::Active { job, .. } => Some(job),
                _ => None,
            })
            .collect()
    }

    /// Whether task `id` is held in any phase.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.lock().values().any(|h| h.id == id)
    }

    /// Requests running now.
    pub(crate) fn active_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|h| matches!(h.phase, Phase::Active { .. }))
            .count()
    }

    /// Requests waiting for their ETA.
    pub(crate) fn scheduled_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|h| h.phase == Phase::Scheduled)
            .count()
    }

    /// Requests held in any phase (the autoscaler's backlog).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn phases_and_guard() {
        let r = Arc::new(Requests::default());
        let msg = TaskMessage::new("t.add", vec![json!(1)], Map::new());
        let g = r.insert(&msg);
        assert_eq!(r.reserved("n").len(), 1);
        g.set_phase(Phase::Active {
            job: JobId::from_u64(7),
            since: 1.0,
        });
        assert!(r.reserved("n").is_empty());
        let a = r.active("n");
        assert_eq!(a[0]["worker_pid"], json!(7));
        assert_eq!(a[0]["acknowledged"], json!(true));
        assert_eq!(r.jobs_of(&msg.headers.id), vec![JobId::from_u64(7)]);
        let q = r.query("n", std::slice::from_ref(&msg.headers.id));
        assert_eq!(q[&msg.headers.id][0], json!("active"));
        drop(g);
        assert_eq!(r.len(), 0);
    }
}
