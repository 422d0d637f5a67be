//! The `greenpool worker` binary driven by the real Python Celery client
//! (and a Python worker driven by the Rust client), each test on its own
//! redis-server.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use support::process::Proc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use redis::Commands;
use support::RedisServer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn worker(server: &RedisServer, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(server.url(0))
        .args(["-n", "interop@%h"])
        .args(args)
        .env_remove("RUST_LOG");
    if !args.contains(&"--loglevel") {
        cmd.args(["--loglevel", "info"]);
    }
    let p = Proc::spawn("worker", cmd);
    p.wait_for(" ready.");
    p
}

/// Runs a scenario of tests/python/interop.py; returns its stdout.
fn py(python: &Path, server: &RedisServer, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(server.url(0)).args(args);
    support::process::stdout_of(cmd, &format!("python {args:?}"))
}

fn setup() -> Option<(RedisServer, PathBuf)> {
    let server = RedisServer::start()?;
    let python = support::python()?;
    Some((server, python))
}

#[test]
fn add_and_echo_round_trip_every_json_type() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10"]);
    assert!(py(&python, &server, &["roundtrip"]).contains("OK"));
    w.stop();
}

#[test]
fn failures_rebuild_python_exceptions() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10"]);
    assert!(py(&python, &server, &["failure"]).contains("OK"));
    w.stop();
}

#[test]
fn unknown_task_is_reported_and_worker_serves_on() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10"]);
    assert!(py(&python, &server, &["unknown"]).contains("OK"));
    w.stop();
}

#[test]
fn countdown_runs_at_its_eta_without_blocking_others() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10"]);
    assert!(py(&python, &server, &["countdown"]).contains("OK"));
    w.stop();
}

#[test]
fn expired_tasks_are_revoked_not_run() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10"]);
    assert!(py(&python, &server, &["expires"]).contains("OK"));
    w.stop();
}

#[test]
fn chains_links_link_errors_and_groups_work() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10"]);
    assert!(py(&python, &server, &["canvas"]).contains("OK"));
    w.stop();
}

#[test]
fn retries_of_a_task_sent_through_its_own_exchange_come_back() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "10", "-Q", "q2"]);
    assert!(py(&python, &server, &["own_exchange"]).contains("OK"));
    w.stop();
    let mut conn = server.conn(0);
    let left: i64 = conn.llen("rk2").unwrap();
    assert_eq!(left, 0, "no retry was pushed on the routing key's list");
    let unacked: i64 = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0);
}

#[test]
fn track_started_and_result_extended_read_from_python() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(
        &server,
        &["-c", "10", "--track-started", "--result-extended"],
    );
    assert!(py(&python, &server, &["extended"]).contains("OK"));
    w.stop();
}

#[test]
fn lower_priority_number_runs_first() {
    let Some((server, python)) = setup() else {
        return;
    };
    // Queue everything before any worker runs, then drain one at a time.
    let ids = py(&python, &server, &["send_priorities"]);
    let w = worker(&server, &["-c", "1", "--prefetch-multiplier", "1"]);
    assert!(py(&python, &server, &["check_priorities", ids.trim()]).contains("OK"));
    w.stop();
}

#[test]
fn concurrency_bounds_overlapping_tasks() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = worker(&server, &["-c", "3"]);
    let out = py(&python, &server, &["concurrency", "3", "9", "0.4"]);
    assert!(out.contains("peak 3"), "{out}");
    w.stop();
}

#[test]
fn python_worker_runs_what_the_rust_client_sends() {
    let Some((server, python)) = setup() else {
        return;
    };
    let celery = python.with_file_name("celery");
    let mut cmd = Command::new(&celery);
    cmd.current_dir(repo().join("bench/python"))
        .args([
            "-A", "tasks", "worker", "-P", "solo", "-l", "info", "-n", "py@%h",
        ])
        .env("GREENPOOL_BROKER_URL", server.url(0));
    let pyw = Proc::spawn("celery", cmd);
    pyw.wait_for("ready.");
    let call = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
            .arg("call")
            .args(args)
            .args(["--broker", &server.url(0), "--wait", "--timeout", "20"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = call(&["greenpool.add", "[2, 40]"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("42"), "{out}");
    let (ok, out, err) = call(&[
        "greenpool.echo",
        r#"["ü", null, 1.5, true]"#,
        "--kwargs",
        r#"{"k": {"n": [false]}}"#,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"args": ["ü", null, 1.5, true], "kwargs": {"k": {"n": [false]}}})
    );
    let (ok, _, err) = call(&["greenpool.fail", r#"["from python"]"#]);
    assert!(!ok);
    assert!(
        err.contains("ValueError") && err.contains("from python"),
        "{err}"
    );
    pyw.stop();
}

#[test]
fn killed_workers_messages_come_back_after_visibility_timeout() {
    let Some((server, python)) = setup() else {
        return;
    };
    let mut conn = server.conn(0);
    // Worker A acks late, runs one task at a time and holds four messages.
    let a = worker(
        &server,
        &["-c", "1", "--prefetch-multiplier", "4", "--acks-late"],
    );
    let sleeps = py(
        &python,
        &server,
        &["send_many", "greenpool.sleep", "1", "[30]"],
    );
    let adds = py(
        &python,
        &server,
        &["send_many", "greenpool.add", "3", "[20, 22]"],
    );
    // Handshake on Redis: all four delivered to A and unacked.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: usize = conn.hlen("unacked").unwrap();
        if n == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker A holds {n} messages, not 4"
        );
        std::thread::yield_now();
    }
    a.signal("-KILL");
    drop(a);
    let list: usize = conn.llen("celery").unwrap();
    assert_eq!(list, 0, "nothing was given back by the killed worker");
    // Worker B sweeps with a short visibility timeout and runs them.
    let b = worker(
        &server,
        &[
            "-c",
            "4",
            "--visibility-timeout",
            "1",
            "--restore-interval",
            "0.5",
            "--acks-late",
        ],
    );
    b.wait_for("Restored");
    assert!(py(&python, &server, &["collect", adds.trim(), "42"]).contains("OK"));
    // The long sleep came back too: it is running (or waiting) on B now.
    let sleep_ids: Vec<String> = serde_json::from_str(sleeps.trim()).unwrap();
    let unacked: Vec<String> = conn.hkeys("unacked").unwrap();
    assert_eq!(unacked.len(), 1, "{unacked:?}");
    let entry: String = conn.hget("unacked", &unacked[0]).unwrap();
    assert!(entry.contains(&sleep_ids[0]), "the sleep is redelivered");
    assert!(entry.contains("\"redelivered\":true"), "{entry}");
    // A late-ack sleep of 30 s would hold up B's warm shutdown; B is
    // killed and dropped instead.
    b.signal("-KILL");
}

#[test]
fn warm_shutdown_finishes_running_and_returns_prefetched() {
    let Some((server, python)) = setup() else {
        return;
    };
    let mut conn = server.conn(0);
    let w = worker(&server, &["-c", "1", "--prefetch-multiplier", "4"]);
    // Handshakes: the sleep alone first, until it runs (it acks early,
    // when it starts: nothing left in the queue or in `unacked`); it then
    // holds the only slot for 15 s. Then three adds, until all three are
    // fetched and unacked, waiting for that slot.
    let wait_held = |conn: &mut redis::Connection, want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: usize = conn.hlen("unacked").unwrap();
            let queued: usize = conn.llen("celery").unwrap();
            if n == want && queued == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker holds {n}, {queued} queued"
            );
            std::thread::yield_now();
        }
    };
    let sleeps = py(
        &python,
        &server,
        &["send_many", "greenpool.sleep", "1", "[15]"],
    );
    w.wait_for("Task greenpool.sleep[");
    wait_held(&mut conn, 0);
    let adds = py(
        &python,
        &server,
        &["send_many", "greenpool.add", "3", "[1, 1]"],
    );
    wait_held(&mut conn, 3);
    w.stop();
    let back: usize = conn.llen("celery").unwrap();
    assert_eq!(back, 3, "prefetched messages returned to the queue");
    let unacked: usize = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0);
    // The running sleep finished and stored its result before exit.
    assert!(py(&python, &server, &["collect", sleeps.trim(), "15.0"]).contains("OK"));
    // A new worker completes the rest: nothing lost.
    let w2 = worker(&server, &["-c", "4"]);
    assert!(py(&python, &server, &["collect", adds.trim(), "2"]).contains("OK"));
    w2.stop();
}

#[test]
fn second_signal_is_a_cold_shutdown_that_gives_late_acks_back() {
    let Some((server, python)) = setup() else {
        return;
    };
    let mut conn = server.conn(0);
    let w = worker(&server, &["-c", "1", "--acks-late", "--loglevel", "debug"]);
    let ids = py(
        &python,
        &server,
        &["send_many", "greenpool.sleep", "1", "[3600]"],
    );
    w.wait_for("] started");
    w.signal("-TERM");
    w.wait_for("warm shutdown requested");
    // Running tasks hold up a warm shutdown; the second signal kills them.
    w.signal("-TERM");
    let status = w.wait_exit();
    assert!(status.success(), "worker exited with {status}");
    let back: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    assert_eq!(
        back.len(),
        1,
        "the killed late-ack task is back on its queue"
    );
    let id: Vec<String> = serde_json::from_str(ids.trim()).unwrap();
    assert!(back[0].contains(&id[0]));
    let unacked: usize = conn.hlen("unacked").unwrap();
    assert_eq!(unacked, 0);
}
