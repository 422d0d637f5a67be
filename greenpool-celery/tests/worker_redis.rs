//! The worker against a real redis-server, driven by the Rust client.

#![cfg(feature = "redis")] // the worker on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::time::Duration;

use greenpool_celery::{
    AsyncResult, Client, ResultError, SendOptions, TaskContext, TaskError, TaskRegistry, TaskState,
    Timestamp, Worker, WorkerConfig,
};
use redis::Commands;
use serde_json::{json, Map, Value};
use support::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

fn registry() -> TaskRegistry {
    let mut t = TaskRegistry::new();
    t.register(
        "t.add",
        &["x", "y"],
        |_: TaskContext, (x, y): (i64, i64)| async move { Ok::<_, TaskError>(x + y) },
    );
    t.register_raw(
        "t.echo",
        |_: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>| async move {
            Ok::<_, TaskError>(json!({"args": args, "kwargs": kwargs}))
        },
    );
    t.register(
        "t.fail",
        &["message"],
        |_: TaskContext, (m,): (String,)| async move { Err::<(), _>(TaskError::value_error(m)) },
    );
    t.register("t.panic", &[], |_: TaskContext, (): ()| async move {
        if true {
            panic!("boom");
        }
        Ok::<_, TaskError>(())
    });
    t.register(
        "t.sleep",
        &["secs"],
        |_: TaskContext, (secs,): (f64,)| async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok::<_, TaskError>(secs)
        },
    );
    t.register("t.flaky", &[], |ctx: TaskContext, (): ()| async move {
        if ctx.retries() < 2 {
            return Err(TaskError::retry(Duration::from_millis(10)));
        }
        Ok(ctx.retries())
    });
    t.register("t.hopeless", &[], |_: TaskContext, (): ()| async move {
        Err::<(), _>(TaskError::value_error("still down").retry_after(Duration::from_millis(10)))
    })
    .max_retries = Some(1);
    t.register("t.late", &[], |_: TaskContext, (): ()| async move {
        Ok::<_, TaskError>("late")
    })
    .acks_late = Some(true);
    t
}

struct Running {
    stop: greenpool_celery::ShutdownHandle,
    task: tokio::task::JoinHandle<
        Result<greenpool_celery::WorkerReport, greenpool_celery::WorkerError>,
    >,
}

async fn start(config: WorkerConfig) -> Running {
    let worker = Worker::new(config, registry()).unwrap();
    let (stop, task) = support::run_until_ready(worker).await;
    Running { stop, task }
}

/// Sends task `name` with positional `args` (the tests' only kind).
async fn send(client: &Client, name: &str, args: Vec<Value>, options: SendOptions) -> AsyncResult {
    client
        .send_task(name, args, Map::new(), options)
        .await
        .unwrap()
}

fn config(server: &RedisServer) -> WorkerConfig {
    WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(4)
        .hostname("celery@test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_results_and_failures() {
    round_trips(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_with_the_lua_fetch_of_older_servers() {
    round_trips(true).await;
}

async fn round_trips(legacy_fetch: bool) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(config(&server).legacy_fetch(legacy_fetch)).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let send = |name: &'static str, args: Value, kwargs: Value| {
        let client = client.clone();
        async move {
            client
                .send_task(
                    name,
                    args.as_array().unwrap().clone(),
                    kwargs.as_object().unwrap().clone(),
                    SendOptions::default(),
                )
                .await
                .unwrap()
        }
    };
    let add = send("t.add", json!([2]), json!({"y": 40})).await;
    assert_eq!(add.get(WAIT).await.unwrap(), json!(42));
    let echo = send(
        "t.echo",
        json!(["ü", null, 1.5, [true]]),
        json!({"k": {"n": false}}),
    )
    .await;
    assert_eq!(
        echo.get(WAIT).await.unwrap(),
        json!({"args": ["ü", null, 1.5, [true]], "kwargs": {"k": {"n": false}}})
    );
    let fail = send("t.fail", json!(["bad thing"]), json!({})).await;
    match fail.get(WAIT).await {
        Err(ResultError::Failed(e)) => {
            assert_eq!(e.exc_type(), "ValueError");
            assert_eq!(e.args(), &[json!("bad thing")]);
            assert!(e.traceback().unwrap().contains("ValueError: bad thing"));
        }
        other => panic!("{other:?}"),
    }
    let wrong = send("t.add", json!(["x", 1]), json!({})).await;
    match wrong.get(WAIT).await {
        Err(ResultError::Failed(e)) => assert_eq!(e.exc_type(), "TypeError"),
        other => panic!("{other:?}"),
    }
    let panicked = send("t.panic", json!([]), json!({})).await;
    match panicked.get(WAIT).await {
        Err(ResultError::Failed(e)) => {
            assert_eq!(e.exc_type(), "RuntimeError");
            assert!(e.args()[0].as_str().unwrap().contains("boom"));
        }
        other => panic!("{other:?}"),
    }
    let unknown = send("t.nope", json!([]), json!({})).await;
    match unknown.get(WAIT).await {
        Err(ResultError::Failed(e)) => {
            assert_eq!(e.exc_type(), "NotRegistered");
            assert_eq!(e.exc_module(), "celery.exceptions");
        }
        other => panic!("{other:?}"),
    }
    // Garbage on the queue is dropped and the worker serves on.
    let mut conn = server.conn(0);
    let _: () = conn.lpush("celery", "{not json").unwrap();
    let _: () = conn.lpush("celery", r#"{"body": "@@", "headers": {"task": "t.add", "id": "x"}, "properties": {"delivery_tag": "bad-b64", "body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#).unwrap();
    // A v2 envelope whose headers lack the task id.
    let no_id = {
        let mut m =
            greenpool_celery::TaskMessage::new("t.add", vec![json!(1), json!(1)], Map::new());
        m.headers.id = String::new();
        m.encode().unwrap()
    };
    let _: () = conn.lpush("celery", no_id).unwrap();
    let late = send("t.late", json!([]), json!({})).await;
    assert_eq!(late.get(WAIT).await.unwrap(), json!("late"));
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.succeeded, 3);
    assert_eq!(report.failed, 4);
    assert_eq!(report.received, 10, "7 tasks and 3 bad messages");
    let unacked: usize = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0, "every message acked or dropped");
    let index: usize = conn.zcard("unacked_index").unwrap();
    assert_eq!(index, 0);
    let binding: bool = conn
        .sismember("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
        .unwrap();
    assert!(binding);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_is_never_overwritten_and_expired_is_revoked() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    // A stored SUCCESS for an id, then the same id sent again to fail.
    let mut backend = server.conn(1);
    let stored = json!({"status": "SUCCESS", "result": 1, "traceback": null, "children": [],
        "date_done": "2026-01-01T00:00:00.000000+00:00", "task_id": "fixed"});
    let _: () = backend
        .set("celery-task-meta-fixed", stored.to_string())
        .unwrap();
    let w = start(config(&server)).await;
    let again = send(
        &client,
        "t.fail",
        vec![json!("x")],
        SendOptions::default().task_id("fixed"),
    )
    .await;
    let past: Timestamp = "2000-01-01T00:00:00Z".parse().unwrap();
    let expired = send(
        &client,
        "t.add",
        vec![json!(1), json!(2)],
        SendOptions::default().expires(past),
    )
    .await;
    match expired.get(WAIT).await {
        Err(ResultError::Revoked(e)) => {
            assert_eq!(e.exc_type(), "TaskRevokedError");
            assert_eq!(e.args(), &[json!("expired")]);
        }
        other => panic!("{other:?}"),
    }
    // A later task on the same single queue proves the failing one ran.
    let after = send(
        &client,
        "t.add",
        vec![json!(1), json!(2)],
        SendOptions::default(),
    )
    .await;
    assert_eq!(after.get(WAIT).await.unwrap(), json!(3));
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.failed, 1, "the failing task ran");
    assert_eq!(again.state().await.unwrap(), TaskState::Success);
    assert_eq!(again.meta().await.unwrap().unwrap().result, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_gives_back_waiting_messages() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    // An ETA far ahead: fetched, waiting on the timer, unacked.
    let eta = send(
        &client,
        "t.add",
        vec![json!(1), json!(1)],
        SendOptions::default().countdown(Duration::from_secs(3600)),
    )
    .await;
    let w = start(config(&server)).await;
    // Wait until the worker holds it in `unacked` (a handshake on Redis state).
    let mut conn = server.conn(0);
    loop {
        let n: usize = conn.hlen("unacked").unwrap();
        if n == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.restored, 1);
    let unacked: usize = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0);
    let back: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    assert_eq!(back.len(), 1);
    let v: Value = serde_json::from_str(&back[0]).unwrap();
    assert_eq!(v["headers"]["id"], json!(eta.id()));
    assert_eq!(v["headers"]["redelivered"], json!(true));
    assert_eq!(v["properties"]["delivery_info"]["redelivered"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_result_and_result_expires_are_honoured() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let config = config(&server)
        .concurrency(1)
        .result_expires(Some(Duration::from_secs(1234)));
    let w = start(config).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let ignored = send(
        &client,
        "t.add",
        vec![json!(1), json!(1)],
        SendOptions::default().ignore_result(true),
    )
    .await;
    // One slot, one queue: the next task's result is stored after the
    // ignored one ran.
    let kept = send(
        &client,
        "t.add",
        vec![json!(2), json!(2)],
        SendOptions::default(),
    )
    .await;
    assert_eq!(kept.get(WAIT).await.unwrap(), json!(4));
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.succeeded, 2);
    let mut backend = server.conn(1);
    let exists: bool = backend
        .exists(format!("celery-task-meta-{}", ignored.id()))
        .unwrap();
    assert!(!exists, "no result stored for ignore_result");
    let ttl: i64 = backend
        .ttl(format!("celery-task-meta-{}", kept.id()))
        .unwrap();
    assert!((1200..=1234).contains(&ttl), "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_time_limit_fails_with_time_limit_exceeded() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(config(&server)).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let slow = client
        .send_task(
            "t.sleep",
            vec![json!(3600)],
            Map::new(),
            SendOptions::default().time_limits(Some(0.2), None),
        )
        .await
        .unwrap();
    match slow.get(WAIT).await {
        Err(ResultError::Failed(e)) => {
            assert_eq!(e.exc_type(), "TimeLimitExceeded");
            assert_eq!(e.exc_module(), "celery.exceptions");
            assert_eq!(e.args(), &[json!(0.2)]);
        }
        other => panic!("{other:?}"),
    }
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.failed, 1);
}

/// A hard limit from the worker's config (no `timelimit` header) kills
/// the task, and the reported `TimeLimitExceeded` names that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_hard_time_limit_is_the_one_reported() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(config(&server).time_limits(Some(0.3), None)).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let slow = client
        .send_task(
            "t.sleep",
            vec![json!(3600)],
            Map::new(),
            SendOptions::default(),
        )
        .await
        .unwrap();
    match slow.get(WAIT).await {
        Err(ResultError::Failed(e)) => {
            assert_eq!(e.exc_type(), "TimeLimitExceeded");
            assert_eq!(e.args(), &[json!(0.3)]);
        }
        other => panic!("{other:?}"),
    }
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_come_back_until_they_succeed_or_run_out() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(config(&server)).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let flaky = send(&client, "t.flaky", vec![], SendOptions::default()).await;
    assert_eq!(
        flaky.get(WAIT).await.unwrap(),
        json!(2),
        "succeeded on the 2nd retry"
    );
    let hopeless = send(&client, "t.hopeless", vec![], SendOptions::default()).await;
    match hopeless.get(WAIT).await {
        Err(ResultError::Failed(e)) => {
            assert_eq!(e.exc_type(), "ValueError");
            assert_eq!(e.args(), &[json!("still down")]);
        }
        other => panic!("{other:?}"),
    }
    w.stop.warm();
    let report = w.task.await.unwrap().unwrap();
    assert_eq!(report.retried, 3, "two for t.flaky, one for t.hopeless");
    assert_eq!(report.received, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_started_publishes_started_before_success() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks = registry();
    let g = gate.clone();
    tasks.register("t.gated", &[], move |_: TaskContext, (): ()| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok::<_, TaskError>("through")
        }
    });
    let worker = Worker::new(config(&server).track_started(true), tasks).unwrap();
    let stop = worker.shutdown_handle();
    let task = tokio::spawn(worker.run());
    // Subscribe to the result channel before sending (as AsyncResult does).
    let id = "gated-1";
    let redis_client = redis::Client::open(server.url(1)).unwrap();
    let mut pubsub = redis_client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("celery-task-meta-{id}"))
        .await
        .unwrap();
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    send(
        &client,
        "t.gated",
        vec![],
        SendOptions::default().task_id(id),
    )
    .await;
    let mut messages = pubsub.on_message();
    use futures::StreamExt;
    let first: String = messages.next().await.unwrap().get_payload().unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["status"], json!("STARTED"));
    assert_eq!(first["result"]["hostname"], json!("celery@test"));
    assert!(first["result"]["pid"].is_u64());
    assert_eq!(first["date_done"], Value::Null);
    gate.notify_one();
    let second: String = messages.next().await.unwrap().get_payload().unwrap();
    let second: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(second["status"], json!("SUCCESS"));
    assert_eq!(second["result"], json!("through"));
    drop(messages);
    stop.warm();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_extended_stores_the_request() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(config(&server).result_extended(true)).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    let r = client
        .send_task(
            "t.add",
            vec![json!(20)],
            json!({"y": 22}).as_object().unwrap().clone(),
            SendOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(42));
    let meta = r.meta().await.unwrap().unwrap();
    assert_eq!(meta.name.as_deref(), Some("t.add"));
    assert_eq!(meta.args, Some(vec![json!(20)]));
    assert_eq!(meta.kwargs.unwrap()["y"], json!(22));
    assert_eq!(meta.worker.as_deref(), Some("celery@test"));
    assert_eq!(meta.retries, Some(0));
    assert_eq!(meta.queue.as_deref(), Some("celery"));
    w.stop.warm();
    w.task.await.unwrap().unwrap();
}
