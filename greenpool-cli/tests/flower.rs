//! Flower, started on a free port against the test's Redis, lists a
//! `greenpool worker -E` with its pool and stats, shows its tasks, and
//! its pool-grow, revoke and shutdown calls take effect.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod control_support;

use std::process::Command;

use control_support::{free_port, greenpool_worker, scenario, support, Proc, RedisServer};

#[test]
fn flower_lists_and_steers_the_worker() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let has_flower = Command::new(&python)
        .args(["-c", "import flower"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_flower {
        assert!(
            !support::required(),
            "GREENPOOL_REQUIRE_REDIS=1 but flower is not installed in {}",
            python.display()
        );
        eprintln!("\n*** SKIPPED: flower is not installed (pip install flower) ***\n");
        return;
    }
    let node = "flower@test";
    let w = greenpool_worker(&server, node, &["-c", "4", "-E"]);
    let port = free_port();
    let mut cmd = Command::new(python.with_file_name("celery"));
    cmd.args(["-b", &server.url(0), "flower"])
        .arg(format!("--port={port}"))
        .arg("--address=127.0.0.1")
        .env("FLOWER_UNAUTHENTICATED_API", "true");
    let flower = Proc::spawn("flower", cmd);
    flower.wait_for("Visit me at");
    assert!(scenario(&python, &server, &["flower", node, &port.to_string()]).contains("OK"));
    assert!(w.wait_exit().success(), "worker after Flower's shutdown");
}
