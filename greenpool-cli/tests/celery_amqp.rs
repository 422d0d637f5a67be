//! `greenpool worker --broker amqp://` driven by the stock Python Celery
//! client, each test on its own RabbitMQ node (and redis-server where the
//! results go to Redis).

#![cfg(all(feature = "amqp", feature = "redis"))] // on RabbitMQ, some results in Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use support::process::Proc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::rabbit::RabbitNode;
use support::RedisServer;

fn spawn_worker(node: &RabbitNode, backend: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(node.url())
        .arg("--result-backend")
        .arg(backend)
        .args(["--loglevel", "info"])
        .args(args)
        .env_remove("RUST_LOG");
    if !args.contains(&"-n") {
        cmd.args(["-n", "amqp@%h"]);
    }
    Proc::spawn("worker", cmd)
}

fn worker(node: &RabbitNode, backend: &str, args: &[&str]) -> Proc {
    let p = spawn_worker(node, backend, args);
    p.wait_for(" ready");
    p
}

/// Runs a scenario of tests/python/interop.py with `env`; returns stdout.
fn py(python: &Path, node: &RabbitNode, env: &[(&str, &str)], args: &[&str]) -> String {
    let url = node.url();
    run_python(
        python,
        "interop.py",
        &[&[url.as_str()][..], args].concat(),
        env,
    )
}

/// Runs tests/python/`script` with `args` and `env`; fails with its
/// output unless it exits 0; returns stdout.
fn run_python(python: &Path, script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args).envs(env.iter().copied());
    support::process::stdout_of(cmd, &format!("python {args:?}"))
}

/// A RabbitMQ node and a redis-server for results, with the backend URL.
fn servers() -> Option<(RabbitNode, RedisServer, String)> {
    let node = RabbitNode::start()?;
    let redis = RedisServer::start()?;
    let backend = redis.url(0);
    Some((node, redis, backend))
}

/// [`setup`] and a redis-server for results, with the backend URL.
fn setup_with_results() -> Option<(RabbitNode, PathBuf, RedisServer, String)> {
    let (node, python) = setup()?;
    let redis = RedisServer::start()?;
    let backend = redis.url(0);
    Some((node, python, redis, backend))
}

fn setup() -> Option<(RabbitNode, PathBuf)> {
    let node = RabbitNode::start()?;
    let python = support::python()?;
    Some((node, python))
}

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

/// Runs scenario `args[0]` of tests/python/control.py against the node,
/// results read from `backend`; returns stdout.
fn control_py(python: &Path, node: &RabbitNode, backend: &str, args: &[&str]) -> String {
    let (first, rest) = args.split_first().unwrap();
    let url = node.url();
    let script_args = [&[*first, url.as_str()][..], rest].concat();
    run_python(
        python,
        "control.py",
        &script_args,
        &[("CONTROL_BACKEND", backend)],
    )
}

/// `greenpool <args> --broker <node>`; its success and stdout.
fn greenpool(node: &RabbitNode, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(args)
        .arg("--broker")
        .arg(node.url())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `greenpool call <args>` through the node with results on `backend`;
/// its success and its stdout and stderr together.
fn call(node: &RabbitNode, backend: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .arg("call")
        .args(args)
        .args(["--broker", &node.url(), "--result-backend", backend])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// [`call`] that must succeed; its output.
fn call_ok(node: &RabbitNode, backend: &str, args: &[&str]) -> String {
    let (ok, out) = call(node, backend, args);
    assert!(ok, "greenpool call {args:?}: {out}");
    out
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

/// `greenpool call greenpool.add [2, 3] --wait` to the `celery` queue.
fn rust_client_adds(node: &RabbitNode, backend: &str) {
    let args = [
        "greenpool.add",
        "[2, 3]",
        "--priority",
        "7",
        "--wait",
        "--timeout",
        "60",
    ];
    assert!(call_ok(node, backend, &args).contains('5'));
}

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
