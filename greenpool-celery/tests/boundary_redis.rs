//! Hostile values at the message boundary, against a real redis-server:
//! numbers no clock can carry, odd priorities, integers beyond 64 bits,
//! Python's NaN tokens, other character sets, UTC offsets, and expiry
//! after waiting for a slot. Every message either runs or gets a FAILURE
//! (or REVOKED) a client can read, and nothing stays unacked.

#![cfg(feature = "redis")] // the worker on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::sync::Arc;
use std::time::Duration;

use greenpool_celery::{
    Client, ResultError, TaskContext, TaskError, TaskMessage, TaskRegistry, Timestamp, Worker,
    WorkerConfig,
};
use redis::Commands;
use serde_json::{json, Map, Value};
use support::RedisServer;
use tokio::sync::{mpsc, Semaphore};

const WAIT: Duration = Duration::from_secs(20);

/// Handshakes with the `t.block` task: it reports its start and waits
/// for a permit.
struct Gate {
    started: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    release: Arc<Semaphore>,
}

fn registry() -> (TaskRegistry, Gate) {
    let mut t = TaskRegistry::new();
    t.register(
        "t.add",
        &["x", "y"],
        |_: TaskContext, (x, y): (i64, i64)| async move { Ok::<_, TaskError>(x + y) },
    );
    t.register_raw(
        "t.echo",
        |_: TaskContext, args: Vec<Value>, _: Map<String, Value>| async move {
            Ok::<_, TaskError>(Value::Array(args))
        },
    );
    t.register(
        "t.retry_forever",
        &[],
        |_: TaskContext, (): ()| async move { Err::<(), _>(TaskError::retry(Duration::MAX)) },
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let permits = Arc::clone(&release);
    t.register("t.block", &[], move |_: TaskContext, (): ()| {
        let tx = tx.clone();
        let permits = Arc::clone(&permits);
        async move {
            let _ = tx.send(());
            let p = permits.acquire().await;
            drop(p);
            Ok::<_, TaskError>("released")
        }
    });
    let gate = Gate {
        started: tokio::sync::Mutex::new(rx),
        release,
    };
    (t, gate)
}

struct Running {
    stop: greenpool_celery::ShutdownHandle,
    task: tokio::task::JoinHandle<
        Result<greenpool_celery::WorkerReport, greenpool_celery::WorkerError>,
    >,
    gate: Gate,
    client: Client,
}

async fn start(server: &RedisServer, concurrency: usize) -> Running {
    let config = WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(concurrency)
        .hostname("celery@boundary");
    let (tasks, gate) = registry();
    let worker = Worker::new(config, tasks).unwrap();
    let (stop, task) = support::run_until_ready(worker).await;
    let client = Client::connect(&server.url(0), Some(&server.url(1)))
        .await
        .unwrap();
    Running {
        stop,
        task,
        gate,
        client,
    }
}

/// A stock-looking v2 message for `name(*args)` as JSON, for editing.
fn message(name: &str, args: Vec<Value>) -> (String, Value) {
    let m = TaskMessage::new(name, args, Map::new());
    let id = m.headers.id.clone();
    (id, serde_json::from_str(&m.encode().unwrap()).unwrap())
}

/// A message whose body is `body` (JSON text), base64-encoded.
fn with_body(mut envelope: Value, body: &[u8]) -> Value {
    envelope["body"] = json!(b64(body));
    envelope
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn push(server: &RedisServer, text: &str) {
    let mut conn = server.conn(0);
    let _: () = conn.lpush("celery", text).unwrap();
}

async fn failure(client: &Client, id: &str) -> TaskError {
    match client.result(id).get(WAIT).await {
        Err(ResultError::Failed(e)) => e,
        other => panic!("{id}: expected a FAILURE, got {other:?}"),
    }
}

async fn stop(server: &RedisServer, w: Running) {
    w.stop.warm();
    w.task.await.unwrap().unwrap();
    let mut conn = server.conn(0);
    let unacked: usize = conn.hlen("unacked").unwrap();
    let queued: usize = conn.llen("celery").unwrap();
    assert_eq!((unacked, queued), (0, 0), "every message acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_no_clock_can_carry_fail_the_request_visibly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(&server, 4).await;
    let mut ids = Vec::new();
    for limit in [json!([1e20, null]), json!([1e19, null]), json!([null, -3])] {
        let (id, mut m) = message("t.add", vec![json!(1), json!(2)]);
        m["headers"]["timelimit"] = limit.clone();
        push(&server, &m.to_string());
        ids.push((id, "time limit", limit.to_string()));
    }
    // Python's json writes NaN for float('nan').
    let (id, mut m) = message("t.add", vec![json!(1), json!(2)]);
    m["headers"]["timelimit"] = json!(["__nan__", null]);
    push(&server, &m.to_string().replace("\"__nan__\"", "NaN"));
    ids.push((id, "NaN", "timelimit NaN".into()));
    // A link whose countdown no clock can reach: the task itself fails,
    // as the OverflowError of Celery's apply_async would make it.
    let (id, mut m) = message("t.echo", vec![json!(1)]);
    let link = json!({"task": "t.echo", "args": [], "kwargs": {}, "options": {"countdown": 1e19},
        "subtask_type": null, "immutable": false});
    let body = serde_json::to_vec(&json!([[1], {}, {"callbacks": [link]}])).unwrap();
    m = with_body(m, &body);
    push(&server, &m.to_string());
    ids.push((id, "link countdown", "link countdown 1e19".into()));
    for (id, want, what) in &ids {
        let e = failure(&w.client, id).await;
        let text = e.to_string();
        assert!(text.contains(want), "{what}: {text}");
    }
    // A retry countdown of Duration::MAX fails instead of panicking.
    let (id, m) = message("t.retry_forever", vec![]);
    push(&server, &m.to_string());
    let e = failure(&w.client, &id).await;
    assert!(e.to_string().contains("retry countdown"), "{e}");
    // The worker serves on.
    let (id, m) = message("t.add", vec![json!(2), json!(3)]);
    push(&server, &m.to_string());
    assert_eq!(w.client.result(&id).get(WAIT).await.unwrap(), json!(5));
    println!(
        "huge numbers: {} requests failed visibly, 0 panics",
        ids.len() + 1
    );
    stop(&server, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_priorities_run_as_kombu_maps_them() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(&server, 4).await;
    let mut ids = Vec::new();
    for p in [
        json!(300),
        json!(-1),
        json!(2.5),
        json!("7"),
        json!("high"),
        json!(1e300),
        json!(null),
        json!([3]),
    ] {
        let (id, mut m) = message("t.add", vec![json!(1), json!(1)]);
        m["properties"]["priority"] = p;
        push(&server, &m.to_string());
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(w.client.result(id).get(WAIT).await.unwrap(), json!(2));
    }
    stop(&server, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_beyond_64_bits_are_exact_or_a_visible_type_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(&server, 4).await;
    let big = "1606938044258990275541962092341162602522202993782792835301376"; // 2**200
    let (echo, m) = message("t.echo", vec![]);
    let body = format!("[[{big}, -{big}], {{}}, null]");
    push(&server, &with_body(m, body.as_bytes()).to_string());
    let got = w.client.result(&echo).get(WAIT).await.unwrap();
    assert_eq!(got.to_string(), format!("[{big},-{big}]"));
    // A task that takes i64 refuses it visibly instead of rounding.
    let (add, m) = message("t.add", vec![]);
    let body = format!("[[{big}, 1], {{}}, null]");
    push(&server, &with_body(m, body.as_bytes()).to_string());
    assert_eq!(failure(&w.client, &add).await.exc_type(), "TypeError");
    stop(&server, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_arguments_and_character_sets() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(&server, 4).await;
    // NaN and Infinity in the arguments: a FAILURE that says so.
    let (nan, m) = message("t.echo", vec![]);
    push(
        &server,
        &with_body(m, b"[[NaN, Infinity, -Infinity], {}, null]").to_string(),
    );
    let e = failure(&w.client, &nan).await;
    assert_eq!(e.exc_type(), "DecodeError");
    assert!(e.to_string().contains("NaN"), "{e}");
    // A UTF-16 body, declared as such, is read.
    let (utf16, mut m) = message("t.echo", vec![]);
    let text: Vec<u8> = "[[\"h\u{e9}\u{2603}\"], {}, null]"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    m["content-encoding"] = json!("utf-16");
    push(&server, &with_body(m, &text).to_string());
    assert_eq!(
        w.client.result(&utf16).get(WAIT).await.unwrap(),
        json!(["h\u{e9}\u{2603}"])
    );
    // UTF-16 sent as utf-8, and an unknown character set: refused.
    let (mislabelled, m) = message("t.echo", vec![]);
    push(&server, &with_body(m, &text).to_string());
    let e = failure(&w.client, &mislabelled).await;
    assert!(e.to_string().contains("not valid utf-8"), "{e}");
    let (unknown, mut m) = message("t.echo", vec![json!(1)]);
    m["content-encoding"] = json!("x-klingon");
    push(&server, &m.to_string());
    let e = failure(&w.client, &unknown).await;
    assert!(e.to_string().contains("x-klingon"), "{e}");
    stop(&server, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_other_than_utc_are_honoured() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(&server, 4).await;
    // Celery with enable_utc off: an ETA that passed an hour ago, written
    // with a +05:30 offset, runs; an expiry that passed, written at -10:00,
    // revokes.
    let hour_ago =
        Timestamp::from_system_time(std::time::SystemTime::now() - Duration::from_secs(3600));
    let in_offset = |ts: Timestamp, offset_secs: i64, text: &str| -> String {
        let shifted = Timestamp::from_system_time(if offset_secs >= 0 {
            ts.system_time() + Duration::from_secs(offset_secs.unsigned_abs())
        } else {
            ts.system_time() - Duration::from_secs(offset_secs.unsigned_abs())
        });
        shifted.to_string().replace("+00:00", text)
    };
    let (ran, mut m) = message("t.add", vec![json!(1), json!(2)]);
    m["headers"]["eta"] = json!(in_offset(hour_ago, 5 * 3600 + 1800, "+05:30"));
    push(&server, &m.to_string());
    assert_eq!(w.client.result(&ran).get(WAIT).await.unwrap(), json!(3));
    let (expired, mut m) = message("t.add", vec![json!(1), json!(2)]);
    m["headers"]["expires"] = json!(in_offset(hour_ago, -10 * 3600, "-10:00"));
    push(&server, &m.to_string());
    match w.client.result(&expired).get(WAIT).await {
        Err(ResultError::Revoked(e)) => assert_eq!(e.exc_type(), "TaskRevokedError"),
        other => panic!("{other:?}"),
    }
    stop(&server, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_checked_again_when_the_task_gets_its_slot() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = start(&server, 1).await;
    // Fill the only slot.
    let (block, m) = message("t.block", vec![]);
    push(&server, &m.to_string());
    w.gate.started.lock().await.recv().await.unwrap();
    // A request that is valid when received, and expires while it waits
    // for the slot.
    let expires = Timestamp::now() + Duration::from_secs(2);
    let (late, mut m) = message("t.add", vec![json!(1), json!(2)]);
    m["headers"]["expires"] = json!(expires.to_string());
    let tag = m["properties"]["delivery_tag"].as_str().unwrap().to_owned();
    push(&server, &m.to_string());
    let mut conn = server.conn(0);
    let deadline = std::time::Instant::now() + WAIT;
    while !conn.hexists::<_, _, bool>("unacked", &tag).unwrap() {
        assert!(std::time::Instant::now() < deadline, "never fetched");
        tokio::task::yield_now().await;
    }
    assert!(
        !expires.is_past(),
        "the machine took longer than 2 s to fetch one message; rerun"
    );
    // Waiting on the clock here is the point of the test, not a
    // synchronisation: the request must be past its expiry when it starts.
    tokio::time::sleep(expires.remaining() + Duration::from_millis(20)).await;
    w.gate.release.add_permits(1);
    assert_eq!(
        w.client.result(&block).get(WAIT).await.unwrap(),
        json!("released")
    );
    match w.client.result(&late).get(WAIT).await {
        Err(ResultError::Revoked(e)) => assert_eq!(e.args(), &[json!("expired")]),
        other => panic!("expired while waiting for a slot, yet: {other:?}"),
    }
    stop(&server, w).await;
}
