//! `greenpool worker --metrics`: the Prometheus endpoint counts what the
//! stock Python client and the Rust CLI make the worker do, its pool
//! gauges follow `pool_grow`/`pool_shrink` and running tasks, reconnects
//! are counted, and a taken address is a clear error. Each test on its
//! own redis-server.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod control_support;

use std::process::Command;

use control_support::support::metrics::{expected_counts, get, scrape, scrape_until, task_counts};
use control_support::{free_port, greenpool_cli, greenpool_worker, scenario, support, RedisServer};

#[test]
fn metrics_count_tasks_follow_the_pool_and_count_reconnects() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let node = "metrics@test";
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = greenpool_worker(&server, node, &["-c", "10", "--metrics", &addr]);

    let m = scrape(port);
    assert_eq!(get(&m, "greenpool_pool_limit"), "10");
    assert_eq!(get(&m, "greenpool_pool_running"), "0");
    assert_eq!(get(&m, "greenpool_pool_free"), "10");
    assert_eq!(get(&m, "greenpool_prefetch_window"), "40");
    assert!(task_counts(&m).is_empty(), "{m:#?}");

    // Success, failure, retry, revoke before run, reject: the stock client.
    assert!(scenario(&python, &server, &["metrics", node]).contains("OK"));
    let expected = expected_counts(&[
        ("received", "greenpool.add", "2"),
        ("received", "greenpool.fail", "1"),
        ("received", "greenpool.retry", "2"),
        ("received", "greenpool.reject", "1"),
        ("succeeded", "greenpool.add", "2"),
        ("succeeded", "greenpool.retry", "1"),
        ("failed", "greenpool.fail", "1"),
        ("failed", "greenpool.reject", "1"),
        ("retried", "greenpool.retry", "1"),
        ("revoked", "greenpool.echo", "1"),
        ("rejected", "greenpool.reject", "1"),
    ]);
    let m = scrape_until(port, "task counters", |m| task_counts(m) == expected);
    for (task, runs) in [
        ("greenpool.add", "2"),
        ("greenpool.fail", "1"),
        ("greenpool.retry", "2"),
        ("greenpool.reject", "1"),
    ] {
        let key = format!("greenpool_task_runtime_seconds_count{{task=\"{task}\"}}");
        assert_eq!(get(&m, &key), runs, "{key}");
    }
    assert_eq!(
        get(
            &m,
            "greenpool_task_runtime_seconds_count{task=\"greenpool.echo\"}"
        ),
        "<absent>",
        "a task revoked before it ran has no run time"
    );

    // Pool gauges follow the remote pool_grow/pool_shrink (Rust CLI).
    let (ok, out) = greenpool_cli(&server, &["control", "pool_grow", "3", "-d", node]);
    assert!(ok && out.contains("pool will grow"), "{out}");
    let m = scrape(port);
    assert_eq!(
        (
            get(&m, "greenpool_pool_limit"),
            get(&m, "greenpool_pool_free")
        ),
        ("13", "13")
    );
    assert_eq!(get(&m, "greenpool_prefetch_window"), "52");
    let (ok, out) = greenpool_cli(&server, &["control", "pool_shrink", "5", "-d", node]);
    assert!(ok && out.contains("pool will shrink"), "{out}");
    let m = scrape(port);
    assert_eq!(
        (
            get(&m, "greenpool_pool_limit"),
            get(&m, "greenpool_pool_free")
        ),
        ("8", "8")
    );
    assert_eq!(get(&m, "greenpool_prefetch_window"), "32");

    // A running task shows in running/free; terminating it counts a revoke.
    let (ok, out) = greenpool_cli(&server, &["call", "greenpool.sleep", "[600]"]);
    assert!(ok, "{out}");
    let id = out.lines().next().unwrap().trim().to_owned();
    scrape_until(port, "one task running", |m| {
        get(m, "greenpool_pool_running") == "1" && get(m, "greenpool_pool_free") == "7"
    });
    let (ok, out) = greenpool_cli(
        &server,
        &[
            "control",
            "revoke",
            &id,
            "--terminate",
            "--signal",
            "SIGKILL",
            "-d",
            node,
        ],
    );
    assert!(ok, "{out}");
    let m = scrape_until(port, "terminated task", |m| {
        get(m, "greenpool_pool_running") == "0"
            && get(m, "greenpool_tasks_revoked_total{task=\"greenpool.sleep\"}") == "1"
    });
    assert_eq!(
        get(
            &m,
            "greenpool_tasks_received_total{task=\"greenpool.sleep\"}"
        ),
        "1"
    );
    assert_eq!(
        get(&m, "greenpool_broker_reconnects_total{link=\"broker\"}"),
        "0"
    );

    // Connections cut by the server: the broker link's reconnect counts.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut server.conn(0))
        .unwrap();
    assert!(killed > 0);
    w.wait_for("restored after");
    let m = scrape_until(port, "broker reconnect counted", |m| {
        get(m, "greenpool_broker_reconnects_total{link=\"broker\"}") != "0"
    });
    assert_eq!(
        get(&m, "greenpool_broker_reconnects_total{link=\"broker\"}"),
        "1"
    );
}

#[test]
fn a_taken_metrics_address_is_a_clear_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(["worker", "-b", &server.url(0), "--metrics", &addr])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")) && err.contains("--metrics"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
