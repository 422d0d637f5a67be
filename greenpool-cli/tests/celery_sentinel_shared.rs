//! A stock Python client, a Python worker and `greenpool worker` on one
//! Redis Sentinel set: the client sends through the sentinels, both
//! workers share the queue, each task runs once and every result comes
//! back; `greenpool inspect` and `control` reach the workers through the
//! sentinels too. Transport options the worker cannot honour are
//! refused at start.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod sentinel_support;

use std::path::Path;
use std::process::Command;

use sentinel_support::support::process::{runs, stdout_of, Proc};
use sentinel_support::{support, until, Topology, MASTER};

fn options() -> String {
    format!("{{\"master_name\": \"{MASTER}\"}}")
}

/// A `greenpool` command reaching the sentinels of `topo`.
fn greenpool(topo: &Topology, verb: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg(verb)
        .args(["--broker", &topo.url(0)])
        .args(["--broker-transport-options", &options()])
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn python_client_and_both_workers_share_work_through_the_sentinels() {
    let Some(python) = support::python() else {
        return;
    };
    let Some(topo) = Topology::start(1) else {
        return;
    };
    let mut cmd = greenpool(&topo, "worker");
    cmd.args(["-n", "gp@sentinel-test", "--loglevel", "info", "-c", "50"]);
    let gp = Proc::spawn("greenpool", cmd);
    gp.wait_for(" ready.");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/python");
    let mut cmd = Command::new(python.with_file_name("celery"));
    cmd.current_dir(dir)
        .args(["-A", "tasks", "worker", "-P", "eventlet", "-l", "info"])
        .args(["-n", "py@%h", "-c", "50"])
        .env("GREENPOOL_BROKER_URL", topo.url(0))
        .env("GREENPOOL_BROKER_TRANSPORT_OPTIONS", options())
        .env("GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS", options());
    let py = Proc::spawn("celery", cmd);
    py.wait_for("ready.");

    // Remote control through the sentinels reaches both workers (asked
    // again until both answer: the Python worker's mailbox may start
    // after its ready line).
    until("both workers answering inspect ping", || {
        let mut ping = greenpool(&topo, "inspect");
        ping.args(["ping", "--timeout", "2"]);
        let out = ping
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.contains("gp@") && out.contains("py@")
    });

    let send = |n: usize| -> Vec<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sentinel.py");
        let mut client = Command::new(&python);
        client
            .arg(script)
            .arg(topo.url(0))
            .arg(MASTER)
            .arg(n.to_string());
        let out = stdout_of(client, "python sentinel.py");
        let ids: Vec<String> = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(ids.len(), n);
        ids
    };
    let n = 2000;
    let ids = send(n);

    // Then the master dies: greenpool follows the sentinels to the
    // promoted replica, takes what the client sends there, and still
    // answers remote control (its pidbox subscription moved too).
    let old = topo.master.port;
    topo.kill_master();
    topo.wait_promoted(old);
    let mut gp_log = gp.wait_for("announce a new master");
    let after = send(500);
    until(
        "greenpool answering inspect ping after the failover",
        || {
            let mut ping = greenpool(&topo, "inspect");
            ping.args(["ping", "--timeout", "2", "-d", "gp@sentinel-test"]);
            let pong = ping
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            pong.contains("gp@")
        },
    );
    // The Rust client through the sentinels, results read where the
    // broker is (no result backend options of their own).
    let mut call = greenpool(&topo, "call");
    call.args(["greenpool.add", "[2, 3]", "--wait"]);
    let five = stdout_of(call, "greenpool call --wait after the failover");

    gp_log.extend(gp.stop_and_log());
    let py_log = py.stop_and_log();
    let count = |ids: &[String]| {
        let by_gp = runs(&[&gp_log], "greenpool.add", ids);
        let by_py = runs(&[&py_log], "greenpool.add", ids);
        let once = ids
            .iter()
            .filter(|i| {
                by_gp.get(*i).copied().unwrap_or(0) + by_py.get(*i).copied().unwrap_or(0) == 1
            })
            .count();
        let (g, p): (usize, usize) = (by_gp.values().sum(), by_py.values().sum());
        (once, g, p)
    };
    let (once, gp_ran, py_ran) = count(&ids);
    let (once_after, gp_after, py_after) = count(&after);
    println!(
        "one Sentinel set, a Python client, greenpool and celery -P eventlet: {n} tasks, \
         {gp_ran} run by greenpool, {py_ran} by Python, {once} once; after kill -9 of the \
         master: 500 more, {gp_after} run by greenpool, {py_after} by Python, {once_after} once"
    );
    assert_eq!(once, n);
    assert!(gp_ran > 0 && py_ran > 0, "both workers took a share");
    assert_eq!(once_after, 500);
    assert_eq!(five.lines().last(), Some("5"), "{five}");
}

/// Transport options the worker cannot honour, and a sentinel URL
/// without a master name, stop it at start with the reason.
#[test]
fn unusable_transport_options_are_refused_with_the_reason() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
            .arg("worker")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--broker-transport-options", r#"{"no_such_option": "x"}"#]);
    assert!(!ok && err.contains("no_such_option"), "{err}");
    let (ok, err) = run(&[
        "--broker",
        "sentinel://127.0.0.1:1/0",
        "--broker-connection-retry-on-startup",
        "false",
    ]);
    assert!(!ok && err.contains("master_name"), "{err}");
}
