//! Helpers of the AMQP CLI tests: `greenpool worker` on a test's own
//! RabbitMQ node, the Python client and `greenpool call`/`inspect`
//! against it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../greenpool-celery/tests/support/mod.rs"]
pub mod support;

pub use support::process::Proc;
pub use support::rabbit::RabbitNode;
pub use support::RedisServer;

pub fn spawn_worker(node: &RabbitNode, backend: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(node.url())
        .arg("--result-backend")
        .arg(backend)
        .args(["--loglevel", "info"])
        .args(args)
        .env_remove("RUST_LOG");
    if !args.contains(&"-n") {
        cmd.args(["-n", "amqp@%h"]);
    }
    Proc::spawn("worker", cmd)
}

pub fn worker(node: &RabbitNode, backend: &str, args: &[&str]) -> Proc {
    let p = spawn_worker(node, backend, args);
    p.wait_for(" ready");
    p
}

/// Runs a scenario of tests/python/interop.py with `env`; returns stdout.
pub fn py(python: &Path, node: &RabbitNode, env: &[(&str, &str)], args: &[&str]) -> String {
    let url = node.url();
    run_python(
        python,
        "interop.py",
        &[&[url.as_str()][..], args].concat(),
        env,
    )
}

/// Runs tests/python/`script` with `args` and `env`; fails with its
/// output unless it exits 0; returns stdout.
pub fn run_python(python: &Path, script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args).envs(env.iter().copied());
    support::process::stdout_of(cmd, &format!("python {args:?}"))
}

/// A RabbitMQ node and a redis-server for results, with the backend URL.
pub fn servers() -> Option<(RabbitNode, RedisServer, String)> {
    let node = RabbitNode::start()?;
    let redis = RedisServer::start()?;
    let backend = redis.url(0);
    Some((node, redis, backend))
}

/// [`setup`] and a redis-server for results, with the backend URL.
pub fn setup_with_results() -> Option<(RabbitNode, PathBuf, RedisServer, String)> {
    let (node, python) = setup()?;
    let redis = RedisServer::start()?;
    let backend = redis.url(0);
    Some((node, python, redis, backend))
}

pub fn setup() -> Option<(RabbitNode, PathBuf)> {
    let node = RabbitNode::start()?;
    let python = support::python()?;
    Some((node, python))
}

/// Runs scenario `args[0]` of tests/python/control.py against the node,
/// results read from `backend`; returns stdout.
pub fn control_py(python: &Path, node: &RabbitNode, backend: &str, args: &[&str]) -> String {
    let (first, rest) = args.split_first().unwrap();
    let url = node.url();
    let script_args = [&[*first, url.as_str()][..], rest].concat();
    run_python(
        python,
        "control.py",
        &script_args,
        &[("CONTROL_BACKEND", backend)],
    )
}

/// `greenpool <args> --broker <node>`; its success and stdout.
pub fn greenpool(node: &RabbitNode, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(args)
        .arg("--broker")
        .arg(node.url())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `greenpool call <args>` through the node with results on `backend`;
/// its success and its stdout and stderr together.
pub fn call(node: &RabbitNode, backend: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .arg("call")
        .args(args)
        .args(["--broker", &node.url(), "--result-backend", backend])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// [`call`] that must succeed; its output.
pub fn call_ok(node: &RabbitNode, backend: &str, args: &[&str]) -> String {
    let (ok, out) = call(node, backend, args);
    assert!(ok, "greenpool call {args:?}: {out}");
    out
}

/// `greenpool call greenpool.add [2, 3] --wait` to the `celery` queue.
pub fn rust_client_adds(node: &RabbitNode, backend: &str) {
    let args = [
        "greenpool.add",
        "[2, 3]",
        "--priority",
        "7",
        "--wait",
        "--timeout",
        "60",
    ];
    assert!(call_ok(node, backend, &args).contains('5'));
}
