//! Follow-up messages on Redis routed as kombu routes a publish: through
//! the exchange's binding table, not by taking the routing key for a
//! queue name.

#![cfg(feature = "redis")] // the worker on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenpool_celery::{
    Client, TaskContext, TaskError, TaskMessage, TaskRegistry, TaskState, Worker, WorkerConfig,
};
use redis::Commands;
use serde_json::{json, Map};
use support::RedisServer;

const WAIT: Duration = Duration::from_secs(20);
/// kombu's separator between the parts of a binding entry and between a
/// queue name and its priority step.
const SEP: &str = "\x06\x16";

fn registry() -> TaskRegistry {
    let mut t = TaskRegistry::new();
    t.register("t.flaky", &[], |ctx: TaskContext, (): ()| async move {
        if ctx.retries() < 2 {
            return Err(TaskError::retry(Duration::from_millis(10)));
        }
        Ok(ctx.retries())
    });
    t.register("t.again", &[], |_: TaskContext, (): ()| async move {
        Err::<(), _>(TaskError::retry(Duration::from_millis(10)))
    })
    .acks_late = Some(true);
    t.register("t.reject_once", &[], |_: TaskContext, (): ()| async move {
        if REJECTED.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(TaskError::reject("busy", true));
        }
        Ok("done")
    })
    .acks_late = Some(true);
    t
}

/// How many times `t.reject_once` ran.
static REJECTED: AtomicUsize = AtomicUsize::new(0);

/// Binds `queue` to direct exchange `exchange` under `routing_key`, as
/// kombu's `queue_bind` does on Redis.
fn bind(conn: &mut redis::Connection, exchange: &str, routing_key: &str, queue: &str) {
    let _: i64 = conn
        .sadd(
            format!("_kombu.binding.{exchange}"),
            format!("{routing_key}{SEP}{SEP}{queue}"),
        )
        .unwrap();
}

/// Pushes task `name` on list `key` as sent to `exchange` with
/// `routing_key`; returns its id.
fn push(
    conn: &mut redis::Connection,
    key: &str,
    name: &str,
    exchange: &str,
    routing_key: &str,
    priority: Option<u8>,
) -> String {
    let mut msg = TaskMessage::new(name, vec![], Map::new());
    msg.properties.delivery_info.exchange = exchange.to_owned();
    msg.properties.delivery_info.routing_key = routing_key.to_owned();
    msg.properties.priority = priority;
    let _: i64 = conn.lpush(key, msg.encode().unwrap()).unwrap();
    msg.headers.id
}

fn config(server: &RedisServer) -> WorkerConfig {
    WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(4)
        .queues(["q2"])
        .hostname("celery@publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_through_the_exchange_it_was_sent_to() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    bind(&mut conn, "ex2", "rk2", "q2");
    // A second queue bound under the same key gets its own copy (kombu's
    // direct exchange delivers to every matching binding); one bound
    // under another key gets none.
    bind(&mut conn, "ex2", "rk2", "q2copy");
    bind(&mut conn, "ex2", "other", "q2other");
    let id = push(&mut conn, "q2", "t.flaky", "ex2", "rk2", Some(4));
    let worker = Worker::new(config(&server), registry()).unwrap();
    let (stop, task) = support::run_until_ready(worker).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    assert_eq!(
        client.result(&id).get(WAIT).await.unwrap(),
        json!(2),
        "the retries reached q2 through ex2 and the task succeeded"
    );
    stop.warm();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.retried, 2);
    for key in ["rk2", "rk2\x06\x163"] {
        let left: i64 = conn.llen(key).unwrap();
        assert_eq!(
            left, 0,
            "nothing was pushed on the routing key's list {key:?}"
        );
    }
    // Both retries went to each queue bound under rk2, at the message's
    // priority step.
    let copies: Vec<String> = conn.lrange("q2copy\x06\x163", 0, -1).unwrap();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let copy = TaskMessage::decode(&copies[0]).unwrap();
    assert_eq!(copy.headers.id, id);
    assert_eq!(copy.properties.delivery_info.exchange, "ex2");
    assert_eq!(copy.properties.delivery_info.routing_key, "rk2");
    let other: i64 = conn.llen("q2other").unwrap();
    assert_eq!(other, 0);
    let unacked: i64 = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0, "every delivery was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_retry_keeps_a_late_ack_message_unacked() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    // ex3 has no binding for rk3: the retry cannot be routed anywhere.
    bind(&mut conn, "ex3", "elsewhere", "q3");
    let id = push(&mut conn, "q2", "t.again", "ex3", "rk3", None);
    let worker = Worker::new(config(&server), registry()).unwrap();
    let (stop, task) = support::run_until_ready(worker).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let result = client.result(&id);
    let start = Instant::now();
    while result.state().await.unwrap() != TaskState::Retry {
        assert!(start.elapsed() < WAIT, "timed out waiting for the retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.warm();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.retried, 1);
    let entry: Vec<String> = conn.hvals("unacked").unwrap();
    assert_eq!(entry.len(), 1, "the message stayed unacked");
    assert!(entry[0].contains(&id), "{entry:?}");
    for key in ["rk3", "q3", "q2"] {
        let left: i64 = conn.llen(key).unwrap();
        assert_eq!(left, 0, "nothing was pushed on {key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_message_goes_back_to_the_queue_it_came_from() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    bind(&mut conn, "ex2", "rk2", "q2");
    bind(&mut conn, "ex2", "rk2", "q2copy");
    let id = push(&mut conn, "q2", "t.reject_once", "ex2", "rk2", None);
    let worker = Worker::new(config(&server), registry()).unwrap();
    let (stop, task) = support::run_until_ready(worker).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    assert_eq!(client.result(&id).get(WAIT).await.unwrap(), json!("done"));
    stop.warm();
    task.await.unwrap().unwrap();
    assert_eq!(
        REJECTED.load(Ordering::SeqCst),
        2,
        "rejected once, then run"
    );
    // A requeue is kombu's restore: back on q2 only, not re-published
    // through ex2 to every queue bound under rk2.
    for key in ["q2copy", "rk2", "q2"] {
        let left: i64 = conn.llen(key).unwrap();
        assert_eq!(left, 0, "{key:?}");
    }
    let unacked: i64 = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_retry_of_an_early_ack_task_is_not_pushed_anywhere() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    let id = push(&mut conn, "q2", "t.flaky", "ex3", "rk3", None);
    let worker = Worker::new(config(&server), registry()).unwrap();
    let (stop, task) = support::run_until_ready(worker).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let result = client.result(&id);
    let start = Instant::now();
    while result.state().await.unwrap() != TaskState::Retry {
        assert!(start.elapsed() < WAIT, "timed out waiting for the retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.warm();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.retried, 1, "the retry was decided once, never run");
    // Acked when it started (as on AMQP, the lost retry is logged): no
    // list holds a copy, nothing waits in unacked.
    for key in ["rk3", "q2", "ex3"] {
        let left: i64 = conn.llen(key).unwrap();
        assert_eq!(left, 0, "nothing was pushed on {key:?}");
    }
    let unacked: i64 = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0);
}
