//! `greenpool worker` under Celery's remote control: the stock `celery`
//! CLI, `app.control`/`inspect()` and an `EventReceiver` (Python), and
//! the Rust `greenpool inspect`/`greenpool control`, each test on its own
//! redis-server.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod control_support;

use std::path::PathBuf;

use control_support::{greenpool_worker, python_worker, scenario, support, RedisServer};

fn setup() -> Option<(RedisServer, PathBuf)> {
    let server = RedisServer::start()?;
    let python = support::python()?;
    Some((server, python))
}

/// `greenpool inspect|control …` against `server`; (success, stdout).
fn greenpool(server: &RedisServer, args: &[&str]) -> (bool, String) {
    control_support::greenpool_cli(server, args)
}

/// The list of commands, typed unchanged into the stock CLI,
/// answered by `greenpool worker -c 10 -E` as by `celery worker -P
/// eventlet -c 10 -E` beside it; broadcast and `destination` reach the
/// right ones; the Rust CLI speaks to both.
#[test]
fn stock_cli_commands_answer_as_a_python_worker_does() {
    let Some((server, python)) = setup() else {
        return;
    };
    let (gp, py) = ("gp@test", "py@test");
    let gw = greenpool_worker(&server, gp, &["-c", "10", "-E"]);
    let pw = python_worker(&python, &server, py, &["-c", "10", "-E", "-Q", "py"]);

    assert!(scenario(&python, &server, &["mixed", gp, py]).contains("OK"));

    let (ok, out) = greenpool(&server, &["inspect", "ping"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("->  {gp}: OK")) && out.contains(&format!("->  {py}: OK")),
        "{out}"
    );
    assert!(out.contains("2 nodes online."), "{out}");
    let (ok, out) = greenpool(&server, &["inspect", "ping", "-d", py, "-j"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v, serde_json::json!([{py: {"ok": "pong"}}]));
    let (ok, out) = greenpool(
        &server,
        &["control", "rate_limit", "greenpool.add", "100/m", "-d", gp],
    );
    assert!(
        ok && out.contains("new rate limit set successfully"),
        "{out}"
    );
    let (ok, out) = greenpool(&server, &["inspect", "stats", "-d", gp, "-j"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v[0][gp]["pool"]["max-concurrency"], 10, "{v}");
    let (ok, _) = greenpool(
        &server,
        &["inspect", "ping", "-d", "nobody@test", "-t", "0.3"],
    );
    assert!(!ok, "no node should have replied");

    // greenpool control revoke <id> --terminate --signal SIGKILL (the form
    // the stock CLI refuses) ends a running task as REVOKED.
    let (ok, out) = greenpool(&server, &["call", "greenpool.sleep", "[600]"]);
    assert!(ok, "{out}");
    let id = out.lines().next().unwrap().trim().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, out) = greenpool(&server, &["inspect", "active", "-d", gp, "-j"]);
        if ok && out.contains(&id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never became active: {out}"
        );
    }
    let (ok, out) = greenpool(
        &server,
        &[
            "control",
            "revoke",
            &id,
            "--terminate",
            "--signal",
            "SIGKILL",
            "-d",
            gp,
        ],
    );
    assert!(ok && out.contains(&format!("terminate: {id}")), "{out}");
    let (ok, out) = greenpool(&server, &["inspect", "revoked", "-d", gp]);
    assert!(ok && out.contains(&format!("* {id}")), "{out}");

    let celery = python.with_file_name("celery");
    let out = scenario(
        &python,
        &server,
        &["cli", celery.to_str().unwrap(), gp, py, "celery", "py"],
    );
    assert!(out.contains("OK"));
    assert!(
        gw.wait_exit().success(),
        "greenpool worker after remote shutdown"
    );
    assert!(
        pw.wait_exit().success(),
        "python worker after remote shutdown"
    );
}

/// Every command through `app.control` / `inspect()`, and the task and
/// worker events an `EventReceiver` sees (events enabled at run time).
#[test]
fn python_control_api_and_events() {
    let Some((server, python)) = setup() else {
        return;
    };
    let node = "api@test";
    let w = greenpool_worker(&server, node, &["-c", "4"]);
    assert!(scenario(&python, &server, &["api", node]).contains("OK"));
    assert!(w.wait_exit().success());
}

/// `--autoscale 3,1`: starts at one slot, grows with the backlog,
/// refuses pool_grow as Celery does, takes a new range.
#[test]
fn autoscale_grows_with_the_backlog() {
    let Some((server, python)) = setup() else {
        return;
    };
    let node = "auto@test";
    let _w = greenpool_worker(&server, node, &["--autoscale", "3,1"]);
    assert!(scenario(&python, &server, &["autoscale", node]).contains("OK"));
}
