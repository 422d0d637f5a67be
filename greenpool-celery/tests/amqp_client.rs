//! The Rust client on AMQP with the rpc:// backend, across a restart of
//! its RabbitMQ node: its exclusive reply queue goes with the old
//! connection and must be declared again before the next task is sent.

#![cfg(feature = "amqp")] // the client and worker on AMQP
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::time::Duration;

use greenpool_celery::{
    Client, SendOptions, TaskContext, TaskError, TaskRegistry, Worker, WorkerConfig,
};
use serde_json::{json, Map};
use support::rabbit::RabbitNode;

fn registry() -> TaskRegistry {
    let mut t = TaskRegistry::new();
    t.register(
        "t.add",
        &["a", "b"],
        |_: TaskContext, (a, b): (i64, i64)| async move { Ok::<_, TaskError>(a + b) },
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_reach_the_client_after_a_broker_restart() {
    let Some(mut node) = RabbitNode::start() else {
        return;
    };
    let config = WorkerConfig::new(node.url())
        .result_backend(Some("rpc://".to_owned()))
        .concurrency(2)
        .hostname("rpc@test");
    let worker = Worker::new(config, registry()).unwrap();
    let (stop, running) = support::run_until_ready(worker).await;

    let client = Client::connect(&node.url(), Some("rpc://")).await.unwrap();
    let add = |a: i64, b: i64| {
        let client = &client;
        async move {
            let r = client
                .send_task(
                    "t.add",
                    vec![json!(a), json!(b)],
                    Map::new(),
                    SendOptions::default(),
                )
                .await
                .unwrap();
            r.get(Duration::from_secs(90)).await.unwrap()
        }
    };
    assert_eq!(add(1, 2).await, json!(3));
    // The restart blocks on rabbitmqctl: off the runtime's threads.
    tokio::task::block_in_place(|| node.restart(Duration::from_millis(500)));
    assert_eq!(add(20, 22).await, json!(42));
    stop.warm();
    running.await.unwrap().unwrap();
}
