//! Signals to the `greenpool worker` binary: a cold shutdown always ends
//! the process, even when Redis stops answering, and a third signal is
//! never swallowed.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(["worker", "--broker", &server.url(0), "-c", "4"])
        .args(["-n", "signals@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[worker] {line}");
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?} ({e})"),
            }
        }
    };
    wait_for(" ready.");
    // Redis stops answering (without closing its connections): the
    // worker's shutdown would wait on it forever.
    kill("-STOP", server.pid());
    let pid = child.id();
    kill("-TERM", pid);
    wait_for("warm shutdown requested");
    kill("-TERM", pid);
    wait_for("cold shutdown requested");
    kill("-TERM", pid);
    // Well before the cold-shutdown grace (30 s) runs out, so it is the
    // third signal that ends the process.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            kill("-CONT", server.pid());
            panic!("the third SIGTERM was swallowed: the worker is still running");
        }
        // Polls an exit status, no synchronisation on another thread.
        std::thread::sleep(Duration::from_millis(20));
    };
    kill("-CONT", server.pid());
    assert_eq!(status.code(), Some(1), "a forced exit says so: {status}");
    println!("third SIGTERM: worker exited with {status} while Redis hung");
}
