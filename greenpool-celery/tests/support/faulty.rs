//! The fault tests' worker harness: a registry that counts how often each
//! task id ran, a worker started and stopped around it, and the messages,
//! pushes and result counts the tests share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenpool_celery::{
    TaskContext, TaskError, TaskMessage, TaskRegistry, Worker, WorkerConfig, WorkerReport,
};
use serde_json::{Map, Value};

/// How long any one wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// How often each task id ran.
pub type Runs = Arc<Mutex<HashMap<String, u32>>>;

pub fn registry(runs: &Runs) -> TaskRegistry {
    let mut t = TaskRegistry::new();
    let r = Arc::clone(runs);
    t.register(
        "t.work",
        &["secs"],
        move |ctx: TaskContext, (secs,): (f64,)| {
            *r.lock().unwrap().entry(ctx.id().to_owned()).or_default() += 1;
            async move {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                Ok::<_, TaskError>(secs)
            }
        },
    );
    t.register(
        "t.big",
        &["n"],
        |_: TaskContext, (n,): (usize,)| async move { Ok::<_, TaskError>("x".repeat(n)) },
    );
    t
}

pub struct Running {
    pub stop: greenpool_celery::ShutdownHandle,
    pub task: tokio::task::JoinHandle<Result<WorkerReport, greenpool_celery::WorkerError>>,
}

pub async fn start(config: WorkerConfig, runs: &Runs) -> Running {
    let worker = Worker::new(config, registry(runs)).unwrap();
    let (stop, task) = super::run_until_ready(worker).await;
    Running { stop, task }
}

impl Running {
    pub async fn stop(self) -> WorkerReport {
        self.stop.warm();
        self.task.await.unwrap().unwrap()
    }
}

/// Encoded task messages for queue `celery`, with their ids and tags.
pub fn messages(n: usize, name: &str, args: &Value) -> Vec<(String, String, String)> {
    (0..n)
        .map(|_| {
            let mut m = TaskMessage::new(name, args.as_array().unwrap().clone(), Map::new());
            m.properties.delivery_info.routing_key = "celery".to_owned();
            let id = m.headers.id.clone();
            let tag = m.properties.delivery_tag.clone().unwrap();
            (id, tag, m.encode().unwrap())
        })
        .collect()
}

pub fn push_all(conn: &mut redis::Connection, msgs: &[(String, String, String)]) {
    let mut pipe = redis::pipe();
    for (_, _, raw) in msgs {
        pipe.cmd("LPUSH").arg("celery").arg(raw).ignore();
    }
    pipe.query::<()>(conn).unwrap();
}

/// How many of `ids` have a SUCCESS result.
pub fn succeeded(conn: &mut redis::Connection, ids: &[String]) -> usize {
    let mut n = 0;
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("celery-task-meta-{id}"))
            .collect();
        let metas: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(conn).unwrap();
        n += metas
            .iter()
            .flatten()
            .filter(|m| m.contains("\"SUCCESS\""))
            .count();
    }
    n
}

/// Polls (a condition with a deadline, not a timing assumption) until
/// `cond` holds.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn twice(runs: &Runs) -> usize {
    runs.lock().unwrap().values().filter(|n| **n > 1).count()
}
