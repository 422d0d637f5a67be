//! The `greenpool worker` log when it goes to a file or a pipe: no ANSI
//! colour codes (the pool's structured warnings included), and a task
//! name of 1 MiB cut instead of logged whole.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::process::Command;

use greenpool_celery::TaskMessage;
use redis::Commands;
use serde_json::{json, Map};
use support::process::Proc;
use support::RedisServer;

#[test]
fn log_to_a_pipe_is_plain_and_bounded() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", &server.url(0), "-c", "4"])
        .args(["-n", "log@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG");
    let worker = Proc::spawn("worker", cmd);
    worker.wait_for(" ready.");
    let mut conn = server.conn(0);
    // A task killed by its hard time limit: the pool logs a structured
    // warning (with fields, which a colouring formatter would italicise).
    let mut slow = TaskMessage::new("greenpool.sleep", vec![json!(30)], Map::new());
    slow.headers.timelimit.hard = Some(0.05);
    let _: () = conn.lpush("celery", slow.encode().unwrap()).unwrap();
    worker.wait_for("hard time limit");
    // A task name of 1 MiB.
    let name = format!("huge.{}", "n".repeat(1 << 20));
    let huge = TaskMessage::new(&name, vec![], Map::new());
    let _: () = conn.lpush("celery", huge.encode().unwrap()).unwrap();
    worker.wait_for("Received unregistered task");
    let log = worker.log();
    drop(worker);
    let longest = log.iter().map(String::len).max().unwrap_or(0);
    let escapes = log.iter().filter(|l| l.contains('\u{1b}')).count();
    println!(
        "worker log: {} lines, longest {longest} bytes, {escapes} with colour codes",
        log.len()
    );
    assert_eq!(escapes, 0, "colour codes in a log that is not a terminal");
    assert!(longest < 4096, "a log line of {longest} bytes");
}
