//! Every log line of a task, its own and the worker's about it, carries
//! the task's span: id, name, retries and queue.

#![cfg(feature = "redis")] // the worker on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenpool_celery::{
    Client, SendOptions, TaskContext, TaskError, TaskRegistry, Worker, WorkerConfig,
};
use serde_json::{json, Map};
use support::RedisServer;

/// A log sink shared with the subscriber.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn task_log_lines_carry_the_task_span() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The runtime is single-threaded, so every task of the worker logs
    // through this thread's default subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut tasks = TaskRegistry::new();
    tasks.register("t.log", &["x"], |_: TaskContext, (x,): (i64,)| async move {
        tracing::info!("inside the task with {x}");
        Ok::<_, TaskError>(x)
    });
    let url = server.url(0);
    let worker = Worker::new(WorkerConfig::new(url.clone()).concurrency(2), tasks).unwrap();
    let (stop, running) = support::run_until_ready(worker).await;

    let client = Client::connect(&url, Some(&url)).await.unwrap();
    let r = client
        .send_task("t.log", vec![json!(7)], Map::new(), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(r.get(Duration::from_secs(20)).await.unwrap(), json!(7));
    stop.warm();
    running.await.unwrap().unwrap();

    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let span = format!("task{{id={} name=t.log retries=0 queue=celery}}", r.id());
    for needle in ["inside the task with 7", "succeeded in"] {
        let line = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"));
        assert!(line.contains(&span), "{line:?} lacks {span}");
    }
}
