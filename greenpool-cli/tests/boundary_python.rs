//! The `greenpool worker` binary against the stock Python Celery client
//! sending what is hard to read at the boundary: `add(2**200, 1)`,
//! `float('nan')`, `time_limit=1e20`, a link with `countdown=1e19`, and
//! ETAs/expiries in local time (`enable_utc=False`). Each must give the
//! exact answer or a failure `AsyncResult.get()` raises.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::RedisServer;

#[test]
fn python_client_gets_exact_answers_or_visible_failures() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let mut worker = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(["worker", "--broker", &server.url(0), "-c", "8"])
        .args(["-n", "boundary@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = worker.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[worker] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(" ready.") => break,
            Ok(_) => {}
            Err(e) => panic!("worker never ready ({e})"),
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/boundary.py");
    let out = Command::new(python)
        .arg(script)
        .arg(server.url(0))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
}
