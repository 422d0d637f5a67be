//! `greenpool worker --broker amqp://` operated as a user runs it: warm
//! shutdown, a broker restart under load, workers sharing a queue, an
//! oversized message, ETA requests, metrics, consumers added and cancelled;
//! each test on its own RabbitMQ node.

#![cfg(all(feature = "amqp", feature = "redis"))] // on RabbitMQ, some results in Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod amqp_support;

use amqp_support::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn warm_shutdown_finishes_running_and_returns_prefetched() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let env = [("INTEROP_BACKEND", backend.as_str())];
    let w = worker(&node, &backend, &["-c", "1", "--prefetch-multiplier", "4"]);
    // Handshakes on the broker. First the sleep alone, until it has
    // started (it acks early, when it starts, so the queue reads (0, 0));
    // it then holds the only slot for 15 s. Then three adds, until all
    // three are delivered and unacked, waiting for that slot.
    let wait_counts = |want: (u64, u64)| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = node.queue_counts("celery");
            if got == Some(want) {
                break;
            }
            assert!(Instant::now() < deadline, "want {want:?}, got {got:?}");
            std::thread::yield_now();
        }
    };
    let sleeps = py(
        &python,
        &node,
        &env,
        &["send_many", "greenpool.sleep", "1", "[15]"],
    );
    w.wait_for("Task greenpool.sleep[");
    wait_counts((0, 0));
    let adds = py(
        &python,
        &node,
        &env,
        &["send_many", "greenpool.add", "3", "[1, 1]"],
    );
    wait_counts((0, 3));
    w.stop();
    assert_eq!(
        node.queue_counts("celery"),
        Some((3, 0)),
        "prefetched given back"
    );
    assert!(py(&python, &node, &env, &["collect", sleeps.trim(), "15.0"]).contains("OK"));
    let w2 = worker(&node, &backend, &["-c", "4"]);
    assert!(py(&python, &node, &env, &["collect", adds.trim(), "2"]).contains("OK"));
    w2.stop();
}

#[test]
fn broker_restart_mid_load_loses_nothing_with_acks_late() {
    let Some((mut node, python)) = setup() else {
        return;
    };
    let metrics_port = support::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let backend = redis.url(0);
    let env = [("INTEROP_BACKEND", backend.as_str())];
    let ids = py(
        &python,
        &node,
        &env,
        &["send_many", "greenpool.sleep", "60", "[0.05]"],
    );
    let w = worker(
        &node,
        &backend,
        &[
            "-c",
            "4",
            "--acks-late",
            "--broker-connection-max-retries",
            "0",
            "-n",
            "restart@amqp",
            "--metrics",
            &metrics_addr,
        ],
    );
    w.wait_for("succeeded");
    node.restart(Duration::from_millis(500));
    // The consumer's and the remote control's connections come back each
    // on its own backoff; the remote control's mailbox queue is declared
    // again once its connection is back.
    w.wait_for_all(&[
        &["broker: amqp://", "connected again"],
        &["remote control: amqp://", "connected again"],
        &["listening on restart@amqp.celery.pidbox again"],
    ]);
    assert!(py(&python, &node, &env, &["collect", ids.trim(), "0.05"]).contains("OK"));
    // A ping finds the node through its new connection.
    let (ok, out) = greenpool(&node, &["inspect", "ping", "-d", "restart@amqp"]);
    assert!(ok && out.contains("restart@amqp: OK"), "{out}");
    // The consumer's and the remote control's connections each counted
    // their reconnection (more than one when a node still booting drops a
    // fresh connection).
    let m = support::metrics::scrape(metrics_port);
    for link in ["broker", "remote control"] {
        let key = format!("greenpool_broker_reconnects_total{{link=\"{link}\"}}");
        let n: u64 = support::metrics::get(&m, &key).parse().unwrap();
        assert!(n >= 1, "{key} = {n}");
    }
    w.stop();
}

#[test]
fn two_greenpool_workers_and_a_python_worker_share_one_queue() {
    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let env = [("INTEROP_BACKEND", backend.as_str())];
    let small = |name| ["-c", "2", "--prefetch-multiplier", "1", "-n", name];
    let a = worker(&node, &backend, &small("a@amqp"));
    let b = worker(&node, &backend, &small("b@amqp"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(python.with_file_name("celery"));
    cmd.current_dir(repo.join("bench/python"))
        .args([
            "-A",
            "tasks",
            "worker",
            "-P",
            "threads",
            "-c",
            "2",
            "--prefetch-multiplier",
            "1",
            "-l",
            "info",
            "-n",
            "py@%h",
        ])
        .env("GREENPOOL_BROKER_URL", node.url())
        .env("GREENPOOL_RESULT_BACKEND", &backend);
    let pyw = Proc::spawn("celery", cmd);
    pyw.wait_for("ready.");
    let ids = py(
        &python,
        &node,
        &env,
        &["send_many", "greenpool.sleep", "90", "[0.02]"],
    );
    assert!(py(&python, &node, &env, &["collect", ids.trim(), "0.02"]).contains("OK"));
    let ids: Vec<String> = serde_json::from_str(ids.trim()).unwrap();
    let mut runs: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut per_worker = Vec::new();
    for (name, log) in [
        ("a", a.stop_and_log()),
        ("b", b.stop_and_log()),
        ("python", pyw.stop_and_log()),
    ] {
        let mut n = 0;
        for line in log.iter().filter(|l| l.contains("succeeded in")) {
            if let Some(id) = ids.iter().find(|id| line.contains(id.as_str())) {
                *runs.entry(id.clone()).or_default() += 1;
                n += 1;
            }
        }
        per_worker.push((name, n));
    }
    assert_eq!(runs.len(), ids.len(), "every task ran: {per_worker:?}");
    assert!(
        runs.values().all(|n| *n == 1),
        "each task ran once: {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|(_, n)| *n > 0),
        "all three workers took part: {per_worker:?}"
    );
}

/// A message over `--max-message-size` on AMQP: FAILURE stored under its
/// id with the reason, the message acked (the queue is left empty), and
/// the worker goes on with the next one.
#[test]
fn an_oversized_message_fails_visibly_and_is_acked() {
    let Some((node, _redis, backend)) = servers() else {
        return;
    };
    let w = worker(&node, &backend, &["-c", "2", "--max-message-size", "2000"]);
    let big = format!("[\"{}\"]", "x".repeat(5000));
    let wait = ["--wait", "--timeout", "60"];
    let (ok, out) = call(
        &node,
        &backend,
        &[&["greenpool.echo", &big][..], &wait].concat(),
    );
    assert!(!ok && out.contains("MessageTooLarge"), "{out}");
    let out = call_ok(
        &node,
        &backend,
        &[&["greenpool.add", "[2, 3]"][..], &wait].concat(),
    );
    assert!(out.contains('5'), "{out}");
    assert_eq!(node.queue_counts("celery"), Some((0, 0)));
    let log = w.stop_and_log();
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("over the limit of 2000 bytes"))
            .count(),
        1,
        "{log:#?}"
    );
}

/// A request waiting for its ETA raises the broker's prefetch window by
/// one while it waits (Celery's QoS increment): with a window of one, a
/// task sent after a far ETA still runs at once, and the consumer
/// channel's `basic.qos` reads 2 meanwhile.
#[test]
fn an_eta_request_widens_the_window_while_it_waits() {
    let Some((node, _redis, backend)) = servers() else {
        return;
    };
    let w = worker(
        &node,
        &backend,
        &["-c", "1", "--prefetch-multiplier", "1", "-n", "eta@amqp"],
    );
    call_ok(
        &node,
        &backend,
        &["greenpool.add", "[1, 1]", "--countdown", "600"],
    );
    w.wait_for("received");
    let out = call_ok(
        &node,
        &backend,
        &["greenpool.add", "[2, 3]", "--wait", "--timeout", "120"],
    );
    assert!(out.contains('5'), "{out}");
    let qos = node
        .ctl(&["list_channels", "global_prefetch_count"])
        .unwrap_or_default();
    assert!(qos.lines().any(|l| l.trim() == "2"), "{qos}");
    w.stop();
    // Warm shutdown gave the ETA request back.
    assert_eq!(node.queue_counts("celery"), Some((1, 0)));
}

/// `--metrics` on AMQP: the interop round trip and failures from the
/// stock client are counted by task name, as on Redis.
#[test]
fn metrics_count_tasks_over_amqp() {
    use support::metrics::{expected_counts, get, scrape, scrape_until, task_counts};

    let Some((node, python, _redis, backend)) = setup_with_results() else {
        return;
    };
    let env = [("INTEROP_BACKEND", backend.as_str())];
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _w = worker(&node, &backend, &["-c", "10", "--metrics", &addr]);
    let m = scrape(port);
    assert_eq!(get(&m, "greenpool_pool_limit"), "10");
    assert_eq!(get(&m, "greenpool_prefetch_window"), "40");
    for scenario in ["roundtrip", "failure"] {
        assert!(
            py(&python, &node, &env, &[scenario]).contains("OK"),
            "{scenario}"
        );
    }
    // roundtrip: four adds and two echoes succeed; failure: two fails and
    // two adds with bad arguments fail.
    let expected = expected_counts(&[
        ("received", "greenpool.add", "6"),
        ("received", "greenpool.echo", "2"),
        ("received", "greenpool.fail", "2"),
        ("succeeded", "greenpool.add", "4"),
        ("succeeded", "greenpool.echo", "2"),
        ("failed", "greenpool.add", "2"),
        ("failed", "greenpool.fail", "2"),
    ]);
    scrape_until(port, "task counters", |m| task_counts(m) == expected);
}

/// `add_consumer` / `cancel_consumer` on AMQP: the consumer declares the
/// new queue with its exchange and binding and consumes it; after the
/// cancel, messages sent there stay in the queue.
#[test]
fn add_and_cancel_consumer_over_amqp() {
    let Some((node, _redis, backend)) = servers() else {
        return;
    };
    let name = "consumers@amqp";
    let w = worker(&node, &backend, &["-c", "2", "-n", name]);
    let (ok, out) = greenpool(&node, &["control", "add_consumer", "q2", "-d", name]);
    assert!(ok && out.contains("add consumer q2"), "{out}");
    let (ok, out) = greenpool(&node, &["inspect", "active_queues", "-d", name, "-j"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<&str> = v[0][name]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, ["celery", "q2"], "{v}");
    let to_q2 = [
        "greenpool.add",
        "[2, 3]",
        "-Q",
        "q2",
        "--wait",
        "--timeout",
        "60",
    ];
    let out = call_ok(&node, &backend, &to_q2);
    assert!(out.contains('5'), "{out}");

    let (ok, out) = greenpool(&node, &["control", "cancel_consumer", "q2", "-d", name]);
    assert!(ok && out.contains("no longer consuming from q2"), "{out}");
    w.wait_for("no longer consuming from q2");
    call_ok(&node, &backend, &["greenpool.add", "[1, 1]", "-Q", "q2"]);
    let out = call_ok(
        &node,
        &backend,
        &["greenpool.add", "[4, 4]", "--wait", "--timeout", "60"],
    );
    assert!(out.contains('8'), "{out}");
    assert_eq!(node.queue_counts("q2"), Some((1, 0)), "left in q2");
    w.stop();
}
