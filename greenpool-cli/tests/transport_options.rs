//! `broker_transport_options` that change the wire, shared by the stock
//! Python client and `greenpool worker` / `call` / `inspect`: a
//! `global_keyprefix` with other priority steps and separator, and
//! `queue_order_strategy`; each test on its own redis-server.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use redis::Commands;
use support::process::Proc;
use support::RedisServer;

/// The options of the prefixed deployment: every key under `gp:`,
/// priority steps 0 and 5 joined by `:`.
const PREFIXED: &str = r#"{"global_keyprefix": "gp:", "sep": ":", "priority_steps": [0, 5]}"#;

fn setup() -> Option<(RedisServer, PathBuf)> {
    let server = RedisServer::start()?;
    let python = support::python()?;
    Some((server, python))
}

/// `greenpool worker` on `server` as node `node`, waited until ready.
fn worker(server: &RedisServer, node: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(server.url(0))
        .args(["-n", node, "--loglevel", "info"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("GREENPOOL_BROKER_TRANSPORT_OPTIONS");
    let p = Proc::spawn("worker", cmd);
    p.wait_for(" ready.");
    p
}

/// `greenpool <args…> -b <server>`; (success, stdout), stderr echoed.
fn cli(server: &RedisServer, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(args)
        .args(["-b", &server.url(0)])
        .env_remove("GREENPOOL_BROKER_TRANSPORT_OPTIONS")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs a scenario of tests/python/transport_options.py with `options`
/// as `broker_transport_options`; returns its stdout.
fn py(python: &Path, server: &RedisServer, options: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/transport_options.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(server.url(0)).arg(options).args(args);
    support::process::stdout_of(cmd, &format!("python {args:?}"))
}

#[test]
fn a_prefixed_deployment_interoperates_with_the_stock_client() {
    let Some((server, python)) = setup() else {
        return;
    };
    let mut conn = redis::Client::open(server.url(0))
        .unwrap()
        .get_connection()
        .unwrap();

    // The stock client queues under the prefix, at the configured steps.
    let sent = py(&python, &server, PREFIXED, &["send_priorities"]);
    assert_eq!(conn.llen::<_, usize>("gp:celery").unwrap(), 4);
    assert_eq!(conn.llen::<_, usize>("gp:celery:5").unwrap(), 4);
    assert!(!conn.exists::<_, bool>("celery").unwrap());

    let node = "tops@test";
    let w = worker(
        &server,
        node,
        &[
            "-c",
            "1",
            "--acks-late",
            "--broker-transport-options",
            PREFIXED,
        ],
    );
    assert!(py(
        &python,
        &server,
        PREFIXED,
        &["check_priorities", sent.trim()]
    )
    .contains("OK"));

    // A running task is unacked under the prefix.
    let (ok, out) = cli(
        &server,
        &[
            "call",
            "greenpool.sleep",
            "[3]",
            "--broker-transport-options",
            PREFIXED,
        ],
    );
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while conn.hlen::<_, usize>("gp:unacked").unwrap() == 0 {
        assert!(Instant::now() < deadline, "nothing became unacked");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(conn.zcard::<_, usize>("gp:unacked_index").unwrap(), 1);
    assert!(!conn.exists::<_, bool>("unacked").unwrap());

    // Remote control meets on the prefixed channel, both ways.
    let (ok, out) = cli(
        &server,
        &["inspect", "ping", "--broker-transport-options", PREFIXED],
    );
    assert!(ok && out.contains(&format!("->  {node}: OK")), "{out}");
    assert!(py(&python, &server, PREFIXED, &["ping", node]).contains("OK"));
    let (ok, out) = cli(&server, &["inspect", "ping", "-t", "0.5"]);
    assert!(!ok, "a caller without the prefix reached the worker: {out}");

    // The Rust client sends under the prefix too.
    let (ok, out) = cli(
        &server,
        &[
            "call",
            "greenpool.add",
            "[2, 3]",
            "--wait",
            "--broker-transport-options",
            PREFIXED,
        ],
    );
    assert!(ok && out.lines().any(|l| l.trim() == "5"), "{out}");

    // Every key of the transport is under the prefix; results are the
    // result backend's, which has no prefix here.
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert!(
        keys.iter().any(|k| k == "gp:_kombu.binding.celery"),
        "{keys:?}"
    );
    for k in &keys {
        assert!(
            k.starts_with("gp:") || k.starts_with("celery-task-meta-"),
            "{k:?} is not under the prefix (all: {keys:?})"
        );
    }
    w.stop();
}

#[test]
fn priority_order_empties_the_first_queue_before_the_second() {
    let Some((server, python)) = setup() else {
        return;
    };
    let sent = py(&python, &server, "{}", &["send_queues"]);
    let w = worker(
        &server,
        "order@test",
        &[
            "-c",
            "1",
            "-Q",
            "first,second",
            "--broker-transport-options",
            r#"{"queue_order_strategy": "priority"}"#,
        ],
    );
    assert!(py(&python, &server, "{}", &["check_queue_order", sent.trim()]).contains("OK"));
    w.stop();
}
