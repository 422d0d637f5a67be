//! Remote control and events from the Rust side: the `Control` client
//! against a worker on a real redis-server, and every task event read off
//! `/0.celeryev/*` (including `task-retried`, which the built-in tasks of
//! the CLI cannot produce).

#![cfg(feature = "redis")] // the worker on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::time::Duration;

use futures::StreamExt;
use greenpool_celery::{
    Client, Control, ControlOptions, ResultError, SendOptions, TaskContext, TaskError,
    TaskRegistry, Worker, WorkerConfig,
};
use serde_json::{json, Map, Value};
use support::RedisServer;

const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "ev@test";

fn registry() -> TaskRegistry {
    let mut t = TaskRegistry::new();
    t.register("t.flaky", &[], |ctx: TaskContext, (): ()| async move {
        if ctx.retries() == 0 {
            Err(TaskError::retry(Duration::ZERO))
        } else {
            Ok(ctx.retries())
        }
    });
    t.register("t.wait", &[], |ctx: TaskContext, (): ()| async move {
        // Ends only when asked to (terminate with a graceful signal).
        ctx.token().cancelled().await;
        Ok::<_, TaskError>("asked to stop")
    });
    t
}

/// Standard base64 (kombu's body encoding), for reading event bodies.
fn b64(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Reads events until `done` holds for the events seen so far.
async fn events_until(
    stream: &mut (impl futures::Stream<Item = redis::Msg> + Unpin),
    seen: &mut Vec<Value>,
    done: impl Fn(&[Value]) -> bool,
) {
    while !done(seen) {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("events stopped coming")
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        let env: Value = serde_json::from_str(&payload).unwrap();
        let body: Value = serde_json::from_slice(&b64(env["body"].as_str().unwrap())).unwrap();
        seen.push(body);
    }
}

fn of<'a>(seen: &'a [Value], id: &str) -> Vec<&'a Value> {
    seen.iter().filter(|e| e["uuid"] == id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_client_and_every_task_event() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url(0);
    let sub_client = redis::Client::open(url.as_str()).unwrap();
    let mut pubsub = sub_client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe("/0.celeryev/*").await.unwrap();
    let mut stream = pubsub.into_on_message();

    let config = WorkerConfig::new(url.clone())
        .concurrency(2)
        .hostname(NODE)
        .send_task_events(true);
    let worker = Worker::new(config, registry()).unwrap();
    let ready = worker.ready();
    let notified = ready.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let running = tokio::spawn(worker.run());
    notified.await;

    let mut seen = Vec::new();
    events_until(&mut stream, &mut seen, |s| {
        s.iter().any(|e| e["type"] == "worker-online")
    })
    .await;
    let online = seen.iter().find(|e| e["type"] == "worker-online").unwrap();
    for k in [
        "hostname",
        "utcoffset",
        "pid",
        "clock",
        "timestamp",
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    ] {
        assert!(online.get(k).is_some(), "worker-online lacks {k}: {online}");
    }

    let control = Control::connect(&url).await.unwrap();
    let to_node = || ControlOptions::default().destination([NODE]).timeout(WAIT);
    let pong = control.call("ping", Map::new(), to_node()).await.unwrap();
    assert_eq!(pong, vec![(NODE.to_owned(), json!({"ok": "pong"}))]);

    // retried, then succeeded
    let client = Client::connect(&url, Some(&url)).await.unwrap();
    let r = client
        .send_task("t.flaky", vec![], Map::new(), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(1));
    let id = r.id().to_owned();
    events_until(&mut stream, &mut seen, |s| {
        of(s, &id).iter().any(|e| e["type"] == "task-succeeded")
    })
    .await;
    let types: Vec<&str> = of(&seen, &id)
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "task-received",
            "task-started",
            "task-retried",
            "task-received",
            "task-started",
            "task-succeeded"
        ]
    );
    let retried = of(&seen, &id)[2];
    assert!(
        retried["exception"].as_str().unwrap().starts_with("Retry("),
        "{retried}"
    );
    assert!(retried["traceback"].is_string(), "{retried}");
    assert_eq!(of(&seen, &id)[3]["retries"], 1);
    assert_eq!(of(&seen, &id)[5]["result"], "1");

    // terminate with SIGTERM: the task sees its token, ends by itself, and
    // is still reported once, as REVOKED
    let w = client
        .send_task("t.wait", vec![], Map::new(), SendOptions::default())
        .await
        .unwrap();
    let wid = w.id().to_owned();
    events_until(&mut stream, &mut seen, |s| {
        of(s, &wid).iter().any(|e| e["type"] == "task-started")
    })
    .await;
    let mut args = Map::new();
    args.insert("task_id".into(), json!(wid));
    args.insert("terminate".into(), json!(true));
    args.insert("signal".into(), json!("SIGTERM"));
    let reply = control.call("revoke", args, to_node()).await.unwrap();
    assert_eq!(
        reply,
        vec![(NODE.to_owned(), json!({"ok": format!("terminate: {wid}")}))]
    );
    match w.get(WAIT).await {
        Err(ResultError::Revoked(e)) => assert_eq!(e.args(), [json!("terminated")]),
        other => panic!("expected REVOKED, got {other:?}"),
    }
    // a heartbeat on request marks the end of what the node sent so far
    let hb = control
        .call("heartbeat", Map::new(), to_node())
        .await
        .unwrap();
    assert_eq!(hb, vec![(NODE.to_owned(), Value::Null)]);
    events_until(&mut stream, &mut seen, |s| {
        s.iter()
            .any(|e| e["type"] == "worker-heartbeat" && e["freq"] == 5.0)
    })
    .await;
    let types: Vec<&str> = of(&seen, &wid)
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task-received", "task-started", "task-revoked"]);
    let rv = of(&seen, &wid)[2];
    assert_eq!(
        (
            rv["terminated"].clone(),
            rv["signum"].clone(),
            rv["expired"].clone()
        ),
        (json!(true), json!(15), json!(false))
    );

    // shutdown: no reply, the worker stops, worker-offline goes out
    let none = control
        .call(
            "shutdown",
            Map::new(),
            to_node().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let report = tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.revoked, 1);
    events_until(&mut stream, &mut seen, |s| {
        s.iter().any(|e| e["type"] == "worker-offline")
    })
    .await;
}
