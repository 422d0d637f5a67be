//! Signals to the `greenpool worker` binary: a cold shutdown always ends
//! the process, even when Redis stops answering, and a third signal is
//! never swallowed.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::process::Proc;
use support::RedisServer;

fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

#[test]
fn third_signal_ends_a_worker_whose_redis_hangs() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", &server.url(0), "-c", "4"])
        .args(["-n", "signals@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG");
    let mut worker = Proc::spawn("worker", cmd);
    worker.wait_for(" ready.");
    // Redis stops answering (without closing its connections): the
    // worker's shutdown would wait on it forever.
    kill("-STOP", server.pid());
    worker.signal("-TERM");
    worker.wait_for("warm shutdown requested");
    worker.signal("-TERM");
    worker.wait_for("cold shutdown requested");
    worker.signal("-TERM");
    // Well before the cold-shutdown grace (30 s) runs out, so it is the
    // third signal that ends the process.
    let status = worker.exit_within(Duration::from_secs(15), &mut Vec::new());
    kill("-CONT", server.pid());
    let Some(status) = status else {
        panic!("the third SIGTERM was swallowed: the worker is still running");
    };
    assert_eq!(status.code(), Some(1), "a forced exit says so: {status}");
    println!("third SIGTERM: worker exited with {status} while Redis hung");
}

/// A worker still retrying its first connection (nothing listens on the
/// broker's port) stops at the first SIGTERM, with status 0: it had
/// taken nothing.
#[test]
fn sigterm_while_the_broker_is_unreachable_at_start_stops_the_worker() {
    let port = support::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", &format!("redis://127.0.0.1:{port}/0")])
        .args(["-n", "unreachable@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG");
    let worker = Proc::spawn("worker", cmd);
    worker.wait_for("retrying in");
    worker.signal("-TERM");
    // Fails (after its deadline) if the worker never exits.
    let (status, lines) = worker.wait_exit_and_log();
    assert!(status.success(), "{status}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stopped before it reached its broker")),
        "{lines:?}"
    );
}
