//! Fault tests of the `greenpool worker` binary, each on its own
//! redis-server: a worker killed with SIGKILL under load loses nothing, and
//! a worker whose broker is gone for good exits non-zero. Each prints its
//! counts.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use support::process::Proc;

use std::time::{Duration, Instant};

use greenpool_celery::TaskMessage;
use redis::Commands;
use serde_json::{json, Map};
use support::faulty::succeeded;
use support::RedisServer;

const DEADLINE: Duration = Duration::from_secs(90);

/// A `greenpool worker` on `url` named `faults@%h`, waited until ready.
fn worker(url: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    named(url, "faults@%h", args, env)
}

/// A `greenpool worker` on `url` named `name`, waited until ready.
fn named(url: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.arg("worker")
        .arg("--broker")
        .arg(url)
        .args(["-n", name, "--loglevel", "info"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG");
    let p = Proc::spawn("worker", cmd);
    p.wait_for(" ready.");
    p
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
    let a = worker(&server.url(0), &["-c", "20", "--acks-late"], &[]);
    until("200 results", || succeeded(&mut conn, &ids) >= 200);
    drop(a); // SIGKILL
    let before = succeeded(&mut conn, &ids);
    let held: usize = conn.hlen("unacked").unwrap();
    let b = worker(
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
    until("every result", || succeeded(&mut conn, &ids) == n);
    until("an empty unacked hash", || {
        conn.hlen::<_, usize>("unacked").unwrap() == 0
    });
    drop(b);
    let done = succeeded(&mut conn, &ids);
    println!(
        "kill -9 with acks_late: {n} sent, {before} done before the kill, {held} unacked at the \
         kill, {done} results after, {} lost",
        n - done
    );
    assert_eq!(done, n);
}

/// The test hook that stops a worker between the two steps of a fetch.
/// Only a binary built with greenpool-celery's `fault-injection` feature
/// reads it; this package's dev-dependency on greenpool-celery turns the
/// feature on in every test build, so the binary under test has it.
const HALT_AFTER_TAKE: (&str, &str) = ("GREENPOOL_FAULT_HALT_AFTER_TAKE", "1");

/// Pushes `n` `greenpool.add` messages; returns their task ids.
fn push_adds(conn: &mut redis::Connection, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut pipe = redis::pipe();
    for i in 0..n {
        let m = TaskMessage::new("greenpool.add", vec![json!(i), json!(1)], Map::new());
        ids.push(m.headers.id.clone());
        pipe.cmd("LPUSH")
            .arg("celery")
            .arg(m.encode().unwrap())
            .ignore();
    }
    pipe.query::<()>(conn).unwrap();
    ids
}

/// How many messages the in-flight lists of workers named `a@...` hold.
fn in_flight(conn: &mut redis::Connection) -> usize {
    let lists: Vec<String> = conn.keys("greenpool.inflight.a@*\x06\x16*").unwrap();
    lists
        .iter()
        .map(|l| conn.llen::<_, usize>(l).unwrap())
        .sum()
}

/// Starts worker `a@%h` with the halt hook and waits until it has taken a
/// batch into its in-flight list and stopped before recording it; checks
/// the batch is there, in the queue's order (not in `unacked`, not in the
/// queue).
fn halted_after_take(conn: &mut redis::Connection, url: &str) -> (Proc, usize) {
    let queued_before: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    let a = named(url, "a@%h", &["-c", "50"], &[HALT_AFTER_TAKE]);
    a.wait_for("halted between the take and the record");
    let lists: Vec<String> = conn.keys("greenpool.inflight.a@*\x06\x16celery").unwrap();
    assert_eq!(lists.len(), 1, "{lists:?}");
    let mut now: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    let flight: Vec<String> = conn.lrange(&lists[0], 0, -1).unwrap();
    let held = in_flight(conn);
    let unacked: usize = conn.hlen("unacked").unwrap();
    assert!(held > 0, "nothing in flight");
    assert_eq!((held, unacked), (flight.len(), 0));
    // The in-flight list is the right end of the queue, in its order.
    now.extend(flight);
    assert!(now == queued_before, "the take changed the order");
    (a, held)
}

/// SIGKILL between the two steps of a fetch (moved to the in-flight list,
/// not yet recorded in `unacked`): the worker started again under the
/// same name returns its in-flight list to the queue, and every task is
/// done.
#[test]
fn kill_9_between_take_and_record_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let n = 500;
    let mut conn = server.conn(0);
    let ids = push_adds(&mut conn, n);
    let (a, held) = halted_after_take(&mut conn, &server.url(0));
    drop(a); // SIGKILL
    let again = named(&server.url(0), "a@%h", &["-c", "50"], &[]);
    until("every result", || succeeded(&mut conn, &ids) == n);
    until("an empty unacked hash", || {
        conn.hlen::<_, usize>("unacked").unwrap() == 0
    });
    let left = in_flight(&mut conn);
    // Returned at start (before its first fetch), not found by chance.
    let returned = again.lines_with(&format!("Returned {held} message(s) a previous run of"));
    drop(again);
    let done = succeeded(&mut conn, &ids);
    println!(
        "kill -9 between take and record: {n} sent, {held} in flight at the kill, {done} results \
         after a restart under the same name (returned at start: {returned}), {} lost, {left} \
         left in flight",
        n - done
    );
    assert_eq!(done, n);
    assert_eq!(left, 0);
    assert_eq!(returned, 1);
}

/// A worker killed between the two steps of a fetch, whose liveness key
/// is then gone: another worker (another name, on another queue) returns
/// its in-flight list to the front of the queue, in order; a worker on
/// the queue then runs every task. The key's expiry (60 s) is stood in
/// for by deleting it once its expiry is seen to be set.
#[test]
fn a_dead_workers_in_flight_list_is_returned_by_another() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let n = 500;
    let mut conn = server.conn(0);
    let ids = push_adds(&mut conn, n);
    let queued_before: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    let (a, held) = halted_after_take(&mut conn, &server.url(0));
    drop(a); // SIGKILL
    let alive: Vec<String> = conn.keys("greenpool.alive.a@*").unwrap();
    assert_eq!(alive.len(), 1, "{alive:?}");
    let ttl: i64 = conn.ttl(&alive[0]).unwrap();
    assert!(ttl > 0, "the liveness key has no expiry ({ttl})");
    let _: () = conn.del(&alive[0]).unwrap();
    // B consumes another queue: what comes back to `celery` stays there.
    let b = named(&server.url(0), "b@%h", &["-c", "50", "-Q", "other"], &[]);
    until("the in-flight messages back on the queue", || {
        conn.llen::<_, usize>("celery").unwrap() == n
    });
    let back: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    let left = in_flight(&mut conn);
    let workers: Vec<String> = conn.smembers("greenpool.workers").unwrap();
    drop(b);
    let c = named(&server.url(0), "c@%h", &["-c", "50"], &[]);
    until("every result", || succeeded(&mut conn, &ids) == n);
    until("an empty unacked hash", || {
        conn.hlen::<_, usize>("unacked").unwrap() == 0
    });
    drop(c);
    let done = succeeded(&mut conn, &ids);
    println!(
        "dead worker's in-flight list: {n} sent, {held} in flight at the kill, returned by \
         another worker in order: {}, {left} left in flight, workers registered after: \
         {workers:?}; {done} results, {} lost",
        back == queued_before,
        n - done
    );
    assert!(back == queued_before, "returned out of order");
    assert_eq!(left, 0);
    assert!(workers.iter().all(|w| !w.starts_with("a@")), "{workers:?}");
    assert_eq!(done, n);
}

/// The broker goes away for good: after `broker_connection_max_retries`
/// attempts the worker exits non-zero, so a supervisor restarts it.
#[test]
fn giving_up_after_max_retries_exits_non_zero() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let w = worker(
        &server.url(0),
        &["-c", "4"],
        &[("GREENPOOL_BROKER_CONNECTION_MAX_RETRIES", "3")],
    );
    let started = Instant::now();
    drop(server);
    w.wait_for("gave up");
    let status = w.wait_exit();
    println!(
        "broker gone: the worker exited with {status} {:.1} s later after 3 attempts",
        started.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "exit status {status}");
}
