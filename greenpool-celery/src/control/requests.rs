//! The requests a worker holds, by phase: reserved (received, waiting
//! for a slot or a rate-limit token), scheduled (waiting for an ETA) and
//! active (running in the pool), as `inspect reserved/scheduled/active`
//! and `query_task` list them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use greenpool::JobId;
use serde_json::{json, Value};

use crate::broker::Received;
use crate::protocol::Timestamp;

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

/// One held request: its id, its message as received, and its phase.
///
/// What `Request.info()` shows is read again from the message when a
/// monitor asks (rarely), so that listing a request costs two reference
/// counts rather than a copy of its id, name and arguments.
#[derive(Debug, Clone)]
struct Held {
    id: Arc<str>,
    received: Arc<Received>,
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
        // The message decoded when it was received, so it decodes again;
        // should it not, the request is still shown, without arguments.
        let msg = self.received.message().ok();
        let (name, args, kwargs, delivery) = match &msg {
            Some(m) => {
                let info = &m.properties.delivery_info;
                (
                    m.headers.task.as_str(),
                    Value::Array(m.args.clone()),
                    Value::Object(m.kwargs.clone()),
                    json!({
                        "exchange": info.exchange,
                        "routing_key": info.routing_key,
                        "priority": m.properties.priority.unwrap_or(0),
                        "redelivered": info.redelivered.unwrap_or(false),
                    }),
                )
            }
            None => ("", json!([]), json!({}), Value::Null),
        };
        json!({
            "id": &*self.id,
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "type": name,
            "hostname": hostname,
            "time_start": time_start,
            "acknowledged": acknowledged,
            "delivery_info": delivery,
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

    /// Lists a request as reserved until the returned guard drops: its
    /// task id, the envelope text it came in (read again for `info`) and
    /// its ETA.
    pub(crate) fn insert(
        self: &Arc<Self>,
        id: &Arc<str>,
        received: &Arc<Received>,
        eta: Option<Timestamp>,
    ) -> Listed {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            id: Arc::clone(id),
            received: Arc::clone(received),
            eta,
            phase: Phase::Reserved,
        };
        self.lock().insert(key, held);
        Listed {
            requests: Arc::clone(self),
            key,
        }
    }

    /// The requests matching `pick`, copied out of the lock (two
    /// reference counts each): their `info` decodes the message again,
    /// which is not done while the request path waits for the lock.
    fn picked(&self, pick: impl Fn(&Held) -> bool) -> Vec<Held> {
        self.lock().values().filter(|h| pick(h)).cloned().collect()
    }

    /// `Request.info()` of every request in phases matching `pick`.
    fn infos(&self, hostname: &str, pick: impl Fn(Phase) -> bool) -> Vec<Value> {
        self.picked(|h| pick(h.phase))
            .iter()
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
        self.picked(|h| h.phase == Phase::Scheduled)
            .iter()
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
        self.picked(|h| ids.iter().any(|i| **i == *h.id))
            .iter()
            .map(|h| (h.id.to_string(), json!([h.phase.name(), h.info(hostname)])))
            .collect()
    }

    /// The pool jobs running task `id`.
    pub(crate) fn jobs_of(&self, id: &str) -> Vec<JobId> {
        self.lock()
            .values()
            .filter(|h| &*h.id == id)
            .filter_map(|h| match h.phase {
                Phase::Active { job, .. } => Some(job),
                _ => None,
            })
            .collect()
    }

    /// Whether task `id` is held in any phase.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.lock().values().any(|h| &*h.id == id)
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
    use crate::protocol::TaskMessage;
    use serde_json::Map;

    #[test]
    fn phases_and_guard() {
        let r = Arc::new(Requests::default());
        let mut msg = TaskMessage::new("t.add", vec![json!(1), json!("x")], Map::new());
        msg.properties.delivery_info.routing_key = "q1".into();
        msg.properties.priority = Some(3);
        let raw = Arc::new(Received::Text(msg.encode().unwrap()));
        let id: Arc<str> = Arc::from(msg.headers.id.as_str());
        let g = r.insert(&id, &raw, None);
        let reserved = r.reserved("n");
        assert_eq!(reserved.len(), 1);
        // The info is read back from the message as it came in.
        assert_eq!(reserved[0]["name"], json!("t.add"));
        assert_eq!(reserved[0]["type"], json!("t.add"));
        assert_eq!(reserved[0]["args"], json!([1, "x"]));
        assert_eq!(reserved[0]["kwargs"], json!({}));
        assert_eq!(reserved[0]["delivery_info"]["routing_key"], json!("q1"));
        assert_eq!(reserved[0]["delivery_info"]["priority"], json!(3));
        assert_eq!(reserved[0]["hostname"], json!("n"));
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

    #[test]
    fn a_message_held_as_fields_lists_as_its_text_does() {
        let r = Arc::new(Requests::default());
        let mut msg = TaskMessage::new("t.add", vec![json!(2)], Map::new());
        msg.properties.delivery_info.exchange = "ex2".into();
        let env = msg.to_envelope().unwrap();
        let id: Arc<str> = Arc::from(msg.headers.id.as_str());
        let text = Arc::new(Received::Text(serde_json::to_string(&env).unwrap()));
        let fields = Arc::new(Received::Fields(Box::new(env)));
        let _a = r.insert(&id, &text, None);
        let _b = r.insert(&id, &fields, None);
        let listed = r.reserved("n");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0], listed[1]);
        assert_eq!(listed[0]["args"], json!([2]));
        assert_eq!(listed[0]["delivery_info"]["exchange"], json!("ex2"));
    }
}
