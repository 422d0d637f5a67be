//! Helpers of the remote-control tests: child processes (greenpool and
//! Python workers, Flower) whose logs are echoed and waited on, and the
//! Python scenarios of tests/python/control.py.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../greenpool-celery/tests/support/mod.rs"]
pub mod support;

pub use support::RedisServer;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub use support::process::Proc;

/// `greenpool worker` on `server` with node name `node`, waited until
/// ready.
pub fn greenpool_worker(server: &RedisServer, node: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(server.url(0))
        .args(["-n", node, "--loglevel", "info"])
        .args(args)
        .env_remove("RUST_LOG");
    let p = Proc::spawn("greenpool", cmd);
    p.wait_for(" ready.");
    p
}

/// `celery worker -P eventlet` with the Python twin of the built-in
/// tasks (bench/python/tasks.py), waited until ready.
pub fn python_worker(python: &Path, server: &RedisServer, node: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(python.with_file_name("celery"));
    cmd.current_dir(repo().join("bench/python"))
        .args(["-A", "tasks", "worker", "-P", "eventlet", "-l", "info"])
        .args(["-n", node])
        .args(args)
        .env("GREENPOOL_BROKER_URL", server.url(0));
    let p = Proc::spawn("celery", cmd);
    p.wait_for("ready.");
    p
}

/// Runs scenario `args[0]` of tests/python/control.py; returns stdout
/// and fails with its output when a check does not hold.
pub fn scenario(python: &Path, server: &RedisServer, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/control.py");
    let (first, rest) = args.split_first().unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(first).arg(server.url(0)).args(rest);
    support::process::stdout_of(cmd, &format!("python {args:?}"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `greenpool <args…> -b <server>` (inspect, control, call); (success,
/// stdout), its stderr echoed.
pub fn greenpool_cli(server: &RedisServer, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(args)
        .args(["-b", &server.url(0)])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
