//! `add_consumer` / `cancel_consumer` from the stock Python client and
//! the Rust CLI, and the `task-rejected` event a stock `EventReceiver`
//! sees; each test on its own redis-server.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod control_support;

use control_support::{greenpool_cli, greenpool_worker, scenario, support, RedisServer};

/// After `add_consumer('q2')` tasks sent to q2 run and `active_queues`
/// lists it; after `cancel_consumer('q2')` a task sent there stays in
/// q2's list; `add_consumer` with an exchange and routing key binds the
/// queue there; `greenpool control add_consumer q2` (Rust) takes the
/// queue back and the task left in it runs.
#[test]
fn add_and_cancel_consumer_change_the_queues_read() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let node = "consumers@test";
    let _w = greenpool_worker(&server, node, &["-c", "4"]);
    let out = scenario(&python, &server, &["consumers", node]);
    let mut lines = out.lines();
    let left = lines.next().unwrap().trim().to_owned();
    assert_eq!(lines.next(), Some("OK"), "{out}");

    let (ok, out) = greenpool_cli(&server, &["control", "add_consumer", "q2", "-d", node]);
    assert!(ok && out.contains("add consumer q2"), "{out}");
    assert!(scenario(&python, &server, &["wait_result", node, &left, "4"]).contains("OK"));
    let (ok, out) = greenpool_cli(&server, &["control", "cancel_consumer", "q2", "-d", node]);
    assert!(ok && out.contains("no longer consuming from q2"), "{out}");
    let (ok, out) = greenpool_cli(&server, &["inspect", "active_queues", "-d", node, "-j"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<&str> = v[0][node]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["celery"], "{v}");
}

/// A task that raises `Reject` (acking late): `task-received`,
/// `-started`, `-failed`, then `task-rejected` with `uuid`, `requeue` and
/// the common fields, as a stock EventReceiver reads them.
#[test]
fn a_rejecting_task_sends_task_rejected() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let node = "rejects@test";
    let _w = greenpool_worker(&server, node, &["-c", "4", "-E"]);
    assert!(scenario(&python, &server, &["rejected", node]).contains("OK"));
}
