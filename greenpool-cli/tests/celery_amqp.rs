//! `greenpool worker --broker amqp://` driven by the stock Python Celery
//! client, each test on its own RabbitMQ node (and redis-server where the
//! results go to Redis).

#![cfg(all(feature = "amqp", feature = "redis"))] // on RabbitMQ, some results in Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod amqp_support;

use amqp_support::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn python_client_runs_the_interop_suite_over_amqp_with_redis_results() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let env = [("INTEROP_BACKEND", backend.as_str())];
    let w = worker(&node, &backend, &["-c", "10"]);
    for scenario in [
        "roundtrip",
        "failure",
        "unknown",
        "countdown",
        "expires",
        "canvas",
    ] {
        assert!(
            py(&python, &node, &env, &[scenario]).contains("OK"),
            "{scenario}"
        );
    }
    w.stop();
}

/// Every chord form of the chord suite on RabbitMQ with results in Redis:
/// the parts are joined in the Redis backend and the body (or its link
/// errors) is published to RabbitMQ, confirmed before the last part's
/// ack.
#[test]
fn python_client_chords_over_amqp_with_redis_results() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let w = worker(&node, &backend, &["-c", "20"]);
    let env = [("CHORDS_BACKEND", backend.as_str())];
    let url = node.url();
    let out = run_python(&python, "chords.py", &[url.as_str(), "forms"], &env);
    assert!(out.contains("OK"), "{out}");
    w.stop();
}

/// Every remote-control command through the stock `app.control` /
/// `inspect()` over AMQP, and the task and worker events a stock
/// `EventReceiver` sees on the `celeryev` topic exchange (the same
/// scenario as on Redis), ending with a remote warm shutdown.
#[test]
fn stock_control_api_and_events_over_amqp() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let name = "api@amqp";
    let w = worker(&node, &backend, &["-c", "4", "-n", name]);
    assert!(control_py(&python, &node, &backend, &["api", name]).contains("OK"));
    let status = w.wait_exit();
    assert!(status.success(), "the worker exited with {status}");
}

/// A greenpool worker and a Python worker on one RabbitMQ: a broadcast
/// reaches both, `destination` and `pattern` only the named one, from the
/// stock client and from `greenpool inspect`; `pool_grow` moves the
/// broker's own prefetch window (the consumer channel's global
/// `basic.qos`), not only the number `stats` reports.
#[test]
fn greenpool_and_python_workers_answer_control_on_one_rabbitmq() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let (gp, pyn) = ("gp@amqp", "py@amqp");
    let w = worker(&node, &backend, &["-c", "10", "-E", "-n", gp]);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(python.with_file_name("celery"));
    cmd.current_dir(repo.join("bench/python"))
        .args(["-A", "tasks", "worker", "-P", "threads", "-c", "2"])
        .args(["-Q", "py", "-l", "info", "-n", pyn])
        .env("GREENPOOL_BROKER_URL", node.url())
        .env("GREENPOOL_RESULT_BACKEND", &backend);
    let pyw = Proc::spawn("celery", cmd);
    pyw.wait_for("ready.");
    assert!(control_py(&python, &node, &backend, &["mixed", gp, pyn]).contains("OK"));

    let (ok, out) = greenpool(&node, &["inspect", "ping"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("->  {gp}: OK")) && out.contains(&format!("->  {pyn}: OK")),
        "{out}"
    );
    let (ok, out) = greenpool(&node, &["inspect", "ping", "-d", pyn, "-j"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v, serde_json::json!([{pyn: {"ok": "pong"}}]));

    // The window on the broker: 10 × 4 = 40, then 12 × 4 = 48.
    let global_prefetch = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = node
                .ctl(&["list_channels", "global_prefetch_count"])
                .unwrap_or_default();
            if out.lines().any(|l| l.trim() == want) {
                return;
            }
            assert!(Instant::now() < deadline, "no channel with {want}: {out}");
        }
    };
    global_prefetch("40");
    let (ok, out) = greenpool(&node, &["control", "pool_grow", "2", "-d", gp]);
    assert!(ok && out.contains("pool will grow"), "{out}");
    let (ok, out) = greenpool(&node, &["inspect", "stats", "-d", gp, "-j"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v[0][gp]["pool"]["max-concurrency"], 12, "{v}");
    assert_eq!(v[0][gp]["prefetch_count"], 48, "{v}");
    assert_eq!(v[0][gp]["broker"]["transport"], "amqp", "{v}");
    // The bug report names the transport too (it said redis everywhere).
    let (ok, out) = greenpool(&node, &["inspect", "report", "-d", gp, "-j"]);
    assert!(ok && out.contains("transport:amqp"), "{out}");
    global_prefetch("48");
    w.stop();
    pyw.stop();
}

#[test]
fn rpc_backend_replies_reach_the_python_client() {
    let Some((node, python)) = setup() else {
        return;
    };
    let env = [("INTEROP_BACKEND", "rpc://")];
    let w = worker(&node, "rpc://", &["-c", "10"]);
    for scenario in ["roundtrip", "failure", "unknown"] {
        assert!(
            py(&python, &node, &env, &[scenario]).contains("OK"),
            "{scenario}"
        );
    }
    w.stop();
}

#[test]
fn higher_priority_runs_first_with_x_max_priority() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let env = [
        ("INTEROP_BACKEND", backend.as_str()),
        ("INTEROP_MAX_PRIORITY", "10"),
    ];
    // Queue everything before any worker runs, then drain one at a time.
    let ids = py(&python, &node, &env, &["send_priorities_amqp"]);
    let w = worker(
        &node,
        &backend,
        &[
            "-c",
            "1",
            "--prefetch-multiplier",
            "1",
            "--queue-max-priority",
            "10",
        ],
    );
    assert!(py(&python, &node, &env, &["check_priorities", ids.trim()]).contains("OK"));
    // The Rust client sends to the queue as it was declared (with
    // x-max-priority) instead of declaring it again without.
    rust_client_adds(&node, &backend);
    w.stop();
}

#[test]
fn a_queue_declared_with_other_arguments_is_a_clear_error() {
    let Some((node, python)) = setup() else {
        return;
    };
    let _ = python;
    let w = worker(&node, "none", &["-c", "2"]);
    w.stop();
    // The durable `celery` queue now exists without x-max-priority.
    let other = spawn_worker(&node, "none", &["-c", "2", "--queue-max-priority", "5"]);
    let (status, lines) = other.wait_exit_and_log();
    assert!(!status.success(), "the worker must stop, not serve");
    let log = lines.join("\n");
    assert!(
        log.contains("PRECONDITION_FAILED") && log.contains("other arguments"),
        "{log}"
    );
    assert_eq!(
        log.matches("cannot connect").count(),
        0,
        "a 406 is not retried: {log}"
    );
}

#[test]
fn quorum_queues_serve_python_clients() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let env = [
        ("INTEROP_BACKEND", backend.as_str()),
        ("INTEROP_QUORUM", "1"),
    ];
    let w = worker(&node, &backend, &["-c", "10", "--quorum-queues"]);
    assert!(py(&python, &node, &env, &["roundtrip"]).contains("OK"));
    let types = node
        .ctl(&["list_queues", "-q", "--no-table-headers", "name", "type"])
        .unwrap();
    assert!(
        types
            .lines()
            .any(|l| l.starts_with("celery") && l.contains("quorum")),
        "{types}"
    );
    // The Rust client uses the quorum queue as it is (declaring it again
    // as a classic queue would be the broker's 406).
    rust_client_adds(&node, &backend);
    w.stop();
}
