//! The `greenpool worker` binary against the stock Python Celery client
//! sending what is hard to read at the boundary: `add(2**200, 1)`,
//! `float('nan')`, `time_limit=1e20`, a link with `countdown=1e19`, and
//! ETAs/expiries in local time (`enable_utc=False`). Each must give the
//! exact answer or a failure `AsyncResult.get()` raises.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use support::process::{stdout_of, Proc};
use support::RedisServer;

#[test]
fn python_client_gets_exact_answers_or_visible_failures() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", &server.url(0), "-c", "8"])
        .args(["-n", "boundary@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG");
    let worker = Proc::spawn("worker", cmd);
    worker.wait_for(" ready.");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/boundary.py");
    let mut python_cmd = Command::new(python);
    python_cmd.arg(script).arg(server.url(0));
    let stdout = stdout_of(python_cmd, "python boundary.py");
    drop(worker);
    assert!(
        stdout.trim_end().ends_with("OK"),
        "python failed:\n{stdout}"
    );
    println!("{stdout}");
}
