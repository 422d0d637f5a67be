//! Chords sent by the stock Python client and joined by `greenpool worker`
//! as Celery's Redis backend joins them: every form of a chord, beside a
//! Python worker on the same Redis, and across a worker killed with
//! SIGKILL. Each test on its own redis-server; each prints its counts.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use greenpool_celery::TaskMessage;
use redis::Commands;
use support::process::{runs, Proc};
use support::RedisServer;

const DEADLINE: Duration = Duration::from_secs(120);

fn setup() -> Option<(RedisServer, PathBuf)> {
    let server = RedisServer::start()?;
    let python = support::python()?;
    Some((server, python))
}

/// A `greenpool worker` on `server` named `name`, waited until ready.
fn greenpool(server: &RedisServer, name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(server.url(0))
        .args(["-n", name, "--loglevel", "info"])
        .args(args)
        .env_remove("RUST_LOG");
    let p = Proc::spawn("greenpool", cmd);
    p.wait_for(" ready.");
    p
}

/// `celery worker -P eventlet` with the Python twin of the built-in
/// tasks, waited until ready.
fn python_worker(python: &Path, server: &RedisServer, args: &[&str]) -> Proc {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/python");
    let mut cmd = Command::new(python.with_file_name("celery"));
    cmd.current_dir(dir)
        .args(["-A", "tasks", "worker", "-P", "eventlet", "-l", "info"])
        .args(["-n", "py@%h"])
        .args(args)
        .env("GREENPOOL_BROKER_URL", server.url(0));
    let p = Proc::spawn("celery", cmd);
    p.wait_for("ready.");
    p
}

/// Runs a scenario of tests/python/chords.py; returns its stdout.
fn py(python: &Path, server: &RedisServer, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/chords.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(server.url(0)).args(args);
    support::process::stdout_of(cmd, &format!("python {args:?}"))
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20)); // polling a condition
    }
}

/// The chord forms of a Celery user, on a greenpool worker alone: the
/// body with the header's results in order, an immutable body, a header
/// of one, a failed part (the body fails with `ChordError` and its link
/// error runs), a chord of 1,000 parts, the chord's keys removed once
/// done, and a saved group result restored.
#[test]
fn chords_from_the_stock_client_run_as_on_a_python_worker() {
    let Some((server, python)) = setup() else {
        return;
    };
    let w = greenpool(&server, "gp@%h", &["-c", "50"]);
    assert!(py(&python, &server, &["forms"]).contains("OK"));
    let log = w.stop_and_log();
    let raised = log.iter().filter(|l| l.contains("ChordError")).count();
    assert_eq!(raised, 1, "the failed chord is logged once: {log:?}");
}

/// A greenpool worker and `celery -P eventlet` on one Redis share 100
/// chords of 10: each body runs once, on one of the two.
#[test]
fn mixed_workers_finish_100_chords_of_10_each_body_once() {
    let Some((server, python)) = setup() else {
        return;
    };
    let gw = greenpool(&server, "gp@%h", &["-c", "20", "-Q", "celery,bodies"]);
    let pw = python_worker(&python, &server, &["-c", "20", "-Q", "celery,bodies"]);
    let out = py(&python, &server, &["send", "100", "10", "bodies", "0"]);
    let ids: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    assert!(py(&python, &server, &["wait", "100", "10", "0", out.trim()]).contains("OK"));
    let (g, p) = (gw.stop_and_log(), pw.stop_and_log());
    let bodies = runs(&[&g, &p], "greenpool.echo", &ids);
    let parts_here = g.iter().filter(|l| l.contains("greenpool.add[")).count();
    let parts_there = p.iter().filter(|l| l.contains("greenpool.add[")).count();
    let once = bodies.values().filter(|&&n| n == 1).count();
    println!(
        "mixed workers: 100 chords of 10, parts logged {parts_here} by greenpool and \
         {parts_there} by Python; bodies run once: {once}, not once: {}",
        100 - once
    );
    assert!(parts_here > 0 && parts_there > 0, "both workers ran parts");
    assert_eq!(once, 100, "{bodies:?}");
}

/// SIGKILL of a late-ack worker in the middle of 200 chords of 20: a
/// second worker gets the killed one's parts back (visibility timeout)
/// and every chord's body is sent once. The bodies go to a queue no
/// worker consumes, so that what was sent is counted, not what ran.
#[test]
fn kill_9_mid_chords_with_late_acks_sends_every_body_once() {
    let Some((server, python)) = setup() else {
        return;
    };
    let (n, size) = (200, 20);
    let out = py(&python, &server, &["send", "200", "20", "bodies", "0.01"]);
    let ids: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    let mut conn = server.conn(0);
    let a = greenpool(&server, "a@%h", &["-c", "20", "--acks-late"]);
    until("20 bodies sent", || {
        conn.llen::<_, usize>("bodies").unwrap() >= 20
    });
    drop(a); // SIGKILL
    let before: usize = conn.llen("bodies").unwrap();
    let held: usize = conn.hlen("unacked").unwrap();
    let b = greenpool(
        &server,
        "b@%h",
        &[
            "-c",
            "50",
            "--acks-late",
            "--visibility-timeout",
            "1",
            "--restore-interval",
            "0.5",
        ],
    );
    until("every part done", || {
        conn.llen::<_, usize>("celery").unwrap() == 0
            && conn.hlen::<_, usize>("unacked").unwrap() == 0
            && conn.llen::<_, usize>("bodies").unwrap() >= n
    });
    drop(b);
    let (sent, per_body) = bodies_sent(&mut conn, size);
    let once = ids.iter().filter(|i| per_body.get(*i) == Some(&1)).count();
    let unfinished: usize = conn
        .keys::<_, Vec<String>>("celery-taskset-meta-*.s")
        .unwrap()
        .len();
    println!(
        "kill -9 mid-chords with acks_late: {n} chords of {size}, {before} bodies sent before \
         the kill, {held} parts unacked at the kill; after: {} bodies sent, {once} chords sent \
         once, {} twice or more, {} never, {unfinished} chords left unfinished",
        sent,
        per_body.values().filter(|&&c| c > 1).count(),
        ids.iter().filter(|i| !per_body.contains_key(*i)).count(),
    );
    assert_eq!((once, sent, unfinished), (n, n, 0));
}

/// The bodies the bodies queue holds, counted per body id; each one's
/// header results checked to number `size`.
fn bodies_sent(conn: &mut redis::Connection, size: usize) -> (usize, HashMap<String, usize>) {
    let sent: Vec<String> = conn.lrange("bodies", 0, -1).unwrap();
    let mut per_body: HashMap<String, usize> = HashMap::new();
    for raw in &sent {
        let m = TaskMessage::decode(raw).unwrap();
        assert_eq!(m.args[0].as_array().map(Vec::len), Some(size), "{m:?}");
        *per_body.entry(m.headers.id).or_default() += 1;
    }
    (sent.len(), per_body)
}

/// Redis stopped and started again (AOF on) in the middle of 200 chords
/// of 20, with late acks and with early acks: the worker reconnects, and
/// every chord's body is sent once.
fn redis_restart_mid_chords(acks_late: bool) {
    let Some(python) = support::python() else {
        return;
    };
    let Some((server, dir)) = RedisServer::start_with_aof("chords-restart") else {
        return;
    };
    let (n, size) = (200, 20);
    let out = py(&python, &server, &["send", "200", "20", "bodies", "0.01"]);
    let ids: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    let mut conn = server.conn(0);
    let mut args = vec!["-c", "20", "--broker-connection-max-retries", "0"];
    if acks_late {
        args.push("--acks-late");
    }
    let w = greenpool(&server, "restart@%h", &args);
    until("20 bodies sent", || {
        conn.llen::<_, usize>("bodies").unwrap() >= 20
    });
    let before: usize = conn.llen("bodies").unwrap();
    let server = server.restart(Duration::from_secs(1));
    let mut conn = server.conn(0);
    until("every part done", || {
        conn.llen::<_, usize>("celery").unwrap() == 0
            && conn.hlen::<_, usize>("unacked").unwrap() == 0
            && conn.llen::<_, usize>("bodies").unwrap() >= n
    });
    let log = w.stop_and_log();
    let (sent, per_body) = bodies_sent(&mut conn, size);
    let once = ids.iter().filter(|i| per_body.get(*i) == Some(&1)).count();
    println!(
        "redis restart mid-chords, {} acks: {n} chords of {size}, {before} bodies sent before \
         the restart; after: {sent} bodies sent, {once} chords sent once, {} twice or more, {} \
         never; connection losses logged: {}",
        if acks_late { "late" } else { "early" },
        per_body.values().filter(|&&c| c > 1).count(),
        ids.iter().filter(|i| !per_body.contains_key(*i)).count(),
        log.iter().filter(|l| l.contains("lost")).count(),
    );
    assert!(
        log.iter().any(|l| l.contains("lost")),
        "the worker saw the restart"
    );
    assert_eq!((once, sent), (n, n));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redis_restart_mid_chords_late_acks_sends_every_body_once() {
    redis_restart_mid_chords(true);
}

#[test]
fn redis_restart_mid_chords_early_acks_sends_every_body_once() {
    redis_restart_mid_chords(false);
}

/// `greenpool call --canvas JSON --wait` on `server`: its stdout lines
/// (the id, then the result).
fn call_canvas(server: &RedisServer, canvas: &serde_json::Value) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args([
            "call",
            "--canvas",
            &canvas.to_string(),
            "--wait",
            "--timeout",
            "60",
        ])
        .args(["-b", &server.url(0)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

fn task(name: &str, args: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"task": name, "args": args, "kwargs": {}, "options": {},
        "subtask_type": null, "immutable": false})
}

/// The canvases of the Rust client (through `greenpool call --canvas`),
/// run by a greenpool worker and by a Python worker alike: a chord, a
/// group, a chain ending in a chord.
#[test]
fn the_rust_client_sends_canvases_that_either_worker_runs() {
    use serde_json::json;
    let Some((server, python)) = setup() else {
        return;
    };
    let header: Vec<_> = (0..10)
        .map(|i| task("greenpool.add", json!([i, i])))
        .collect();
    let chord = json!({"task": "celery.chord", "subtask_type": "chord", "options": {},
        "args": [], "immutable": false,
        "kwargs": {"kwargs": {}, "header": header, "body": task("greenpool.echo", json!(["tail"]))}});
    let group = json!({"task": "celery.group", "subtask_type": "group", "options": {},
        "args": [], "immutable": false,
        "kwargs": {"tasks": [task("greenpool.add", json!([1, 1])), task("greenpool.add", json!([2, 2]))]}});
    let chain = json!({"task": "celery.chain", "subtask_type": "chain", "options": {},
        "args": [], "immutable": false,
        "kwargs": {"tasks": [task("greenpool.add", json!([1, 1])), {
            "task": "celery.chord", "subtask_type": "chord", "options": {}, "args": [], "immutable": false,
            "kwargs": {"kwargs": {}, "header": [task("greenpool.add", json!([10])), task("greenpool.add", json!([20]))],
                "body": task("greenpool.echo", json!([]))}}]}});
    let sums: Vec<i64> = (0..10).map(|i| 2 * i).collect();
    let check = |server: &RedisServer| {
        let out = call_canvas(server, &chord);
        let got: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(got, json!({"args": [sums, "tail"], "kwargs": {}}));
        let out = call_canvas(server, &group);
        assert_eq!(out[1], "[2,4]");
        let out = call_canvas(server, &chain);
        let got: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(got, json!({"args": [[12, 22]], "kwargs": {}}));
    };
    let gw = greenpool(&server, "gp@%h", &["-c", "20"]);
    check(&server);
    drop(gw);
    let pw = python_worker(&python, &server, &["-c", "20"]);
    check(&server);
    drop(pw);
}

/// `greenpool bench worker --canvas` drains its chords and reports chords
/// per second and Redis commands per chord (the baseline left out here;
/// the bench itself checks every body got its results).
#[test]
fn the_canvas_bench_drains_its_chords() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", server.port);
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args([
            "bench",
            "worker",
            "--canvas",
            "--chords",
            "30",
            "--chord-size",
            "5",
        ])
        .args(["-c", "50", "--python", "none", "--redis", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("chords/s") && stdout.contains("redis cmds/chord"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("greenpool worker "))
        .unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(2), Some("30"), "{stdout}");
}
