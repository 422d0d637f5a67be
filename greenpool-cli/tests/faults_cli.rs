//! Fault tests of the `greenpool worker` binary, each on its own
//! redis-server: a worker killed with SIGKILL under load loses nothing, and
//! a worker whose broker is gone for good exits non-zero. Each prints its
//! counts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use greenpool_celery::TaskMessage;
use redis::Commands;
use serde_json::{json, Map};
use support::RedisServer;

const DEADLINE: Duration = Duration::from_secs(90);

/// A worker process whose stderr lines can be waited for.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn worker(url: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greenpool"))
            .arg("worker")
            .arg("--broker")
            .arg(url)
            .args(["-n", "faults@%h", "--loglevel", "info"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[worker] {line}");
                let _ = tx.send(line);
            }
        });
        let p = Proc { child, lines: rx };
        p.wait_for(" ready.");
        p
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("worker: no line with {needle:?} ({e})"),
            }
        }
    }

    /// Waits for the process to exit by itself, failing after the deadline.
    fn exit_status(mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the worker did not exit");
            // The log is the handshake: wait for the next line or a tick.
            let _ = self.lines.recv_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn results(conn: &mut redis::Connection, ids: &[String]) -> usize {
    let mut n = 0;
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("celery-task-meta-{id}"))
            .collect();
        let metas: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(conn).unwrap();
        n += metas
            .iter()
            .flatten()
            .filter(|m| m.contains("\"SUCCESS\""))
            .count();
    }
    n
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20)); // polling a condition
    }
}

/// SIGKILL under load with acks_late: a second worker gets the killed
/// one's messages back (visibility timeout) and every task gets its result.
#[test]
fn kill_9_under_load_with_late_acks_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let n = 1000;
    let mut conn = server.conn(0);
    let mut ids = Vec::with_capacity(n);
    let mut pipe = redis::pipe();
    for _ in 0..n {
        let mut m = TaskMessage::new("greenpool.sleep", vec![json!(0.02)], Map::new());
        m.properties.delivery_info.routing_key = "celery".to_owned();
        ids.push(m.headers.id.clone());
        pipe.cmd("LPUSH")
            .arg("celery")
            .arg(m.encode().unwrap())
            .ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    let a = Proc::worker(&server.url(0), &["-c", "20", "--acks-late"], &[]);
    until("200 results", || results(&mut conn, &ids) >= 200);
    drop(a); // SIGKILL
    let before = results(&mut conn, &ids);
    let held: usize = conn.hlen("unacked").unwrap();
    let b = Proc::worker(
        &server.url(0),
        &[
            "-c",
            "50",
            "--acks-late",
            "--visibility-timeout",
            "1",
            "--restore-interval",
            "0.5",
        ],
        &[],
    );
    until("every result", || results(&mut conn, &ids) == n);
    until("an empty unacked hash", || {
        conn.hlen::<_, usize>("unacked").unwrap() == 0
    });
    drop(b);
    let done = results(&mut conn, &ids);
    println!(
        "kill -9 with acks_late: {n} sent, {before} done before the kill, {held} unacked at the \
         kill, {done} results after, {} lost",
        n - done
    );
    assert_eq!(done, n);
}

/// The broker goes away for good: after `broker_connection_max_retries`
/// attempts the worker exits non-zero, so a supervisor restarts it.
#[test]
fn giving_up_after_max_retries_exits_non_zero() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = Proc::worker(
        &server.url(0),
        &["-c", "4"],
        &[("GREENPOOL_BROKER_CONNECTION_MAX_RETRIES", "3")],
    );
    let started = Instant::now();
    drop(server);
    w.wait_for("gave up");
    let status = w.exit_status();
    println!(
        "broker gone: the worker exited with {status} {:.1} s later after 3 attempts",
        started.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "exit status {status}");
}
