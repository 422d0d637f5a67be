//! Workers on Redis Sentinel: one master, two replicas and three sentinels
//! on loopback, started by each scenario. A worker reaches the master
//! through `sentinel://` URLs and Celery's transport options, drains
//! 5,000 tasks, and lives through a failover in the middle: planned
//! (`SENTINEL FAILOVER`) or not (`kill -9` of the master). Each scenario
//! counts, on the master that survives, the results, the tasks that ran
//! twice or never, and what is left queued or unacked, for `greenpool
//! worker` and for `celery worker -P eventlet` alike, and prints a row.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod sentinel_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use greenpool_celery::TaskMessage;
use redis::Commands;
use sentinel_support::support::faulty::succeeded;
use sentinel_support::support::process::{runs, Proc};
use sentinel_support::{support, until, Topology, MASTER};
use serde_json::{json, Map};

/// Tasks per scenario.
const TASKS: usize = 5000;
/// The visibility timeout both workers run with: what a lost ack costs.
const VISIBILITY: u64 = 10;
/// How long after a failover a worker has to settle before what it left
/// is counted as it is.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// How the master goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// `SENTINEL FAILOVER`: the master is demoted while it still runs.
    Planned,
    /// `kill -9` of the master; the sentinels notice after a second.
    Kill9,
}

/// The worker under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    /// `greenpool worker` with `--sync-replicas N` (0: off).
    Greenpool { sync_replicas: u32 },
    /// `celery worker -P eventlet` with the Python twin of the tasks.
    Celery,
}

/// What one scenario left, on the master that survived.
#[derive(Debug)]
struct Counts {
    before: usize,
    results: usize,
    twice: usize,
    never: usize,
    queued: usize,
    unacked: usize,
}

impl Counts {
    /// Tasks whose result is not on the surviving master.
    fn lost(&self) -> usize {
        TASKS - self.results
    }
}

fn start_worker(topo: &Topology, python: Option<&Path>, worker: Worker, late: bool) -> Proc {
    let master = format!("\"master_name\": \"{MASTER}\"");
    match worker {
        Worker::Greenpool { sync_replicas } => {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
            cmd.args(["worker", "--broker", &topo.url(0)])
                .args(["--broker-transport-options", &format!("{{{master}}}")])
                .args(["-n", "gp@%h", "--loglevel", "info", "-c", "100"])
                .args(["--broker-connection-max-retries", "0"])
                .args(["--visibility-timeout", &VISIBILITY.to_string()])
                .args(["--restore-interval", "0.5"])
                .args(["--sync-replicas", &sync_replicas.to_string()])
                .env_remove("RUST_LOG");
            if late {
                cmd.arg("--acks-late");
            }
            let p = Proc::spawn("greenpool", cmd);
            p.wait_for(" ready.");
            p
        }
        Worker::Celery => {
            let python = python.expect("a Python for the Celery worker");
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/python");
            let mut cmd = Command::new(python.with_file_name("celery"));
            cmd.current_dir(dir)
                .args(["-A", "tasks", "worker", "-P", "eventlet", "-l", "info"])
                .args(["-n", "py@%h", "-c", "100", "--without-gossip"])
                .env("GREENPOOL_BROKER_URL", topo.url(0))
                .env(
                    "GREENPOOL_BROKER_TRANSPORT_OPTIONS",
                    format!("{{{master}, \"visibility_timeout\": {VISIBILITY}}}"),
                )
                .env(
                    "GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS",
                    format!("{{{master}}}"),
                )
                .env("GREENPOOL_ACKS_LATE", if late { "1" } else { "0" });
            let p = Proc::spawn("celery", cmd);
            p.wait_for("ready.");
            p
        }
    }
}

/// One scenario on a topology of its own; `None` when a server or Python
/// is missing (and the test may skip).
fn scenario(
    python: Option<&Path>,
    worker: Worker,
    failover: Failover,
    late: bool,
) -> Option<Counts> {
    let topo = Topology::start(2)?;
    let mut conn = topo.master.conn(0);
    let mut ids = Vec::with_capacity(TASKS);
    let mut pipe = redis::pipe();
    for _ in 0..TASKS {
        let m = TaskMessage::new("greenpool.sleep", vec![json!(0.002)], Map::new());
        ids.push(m.headers.id.clone());
        pipe.cmd("LPUSH")
            .arg("celery")
            .arg(m.encode().unwrap())
            .ignore();
    }
    // Every message on both replicas before the worker starts: what a
    // failover loses is then the worker's.
    let replicated: usize = pipe
        .cmd("WAIT")
        .arg(topo.replicas.len())
        .arg(10_000)
        .query::<Vec<usize>>(&mut conn)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(replicated, topo.replicas.len());
    let w = start_worker(&topo, python, worker, late);
    until("the first 1,000 results", || {
        succeeded(&mut conn, &ids) >= 1000
    });
    let before = succeeded(&mut conn, &ids);
    let old = topo.master.port;
    match failover {
        Failover::Planned => {
            let mut s = topo.sentinels[0].conn().unwrap();
            let _: () = redis::cmd("SENTINEL")
                .arg("failover")
                .arg(MASTER)
                .query(&mut s)
                .unwrap();
        }
        Failover::Kill9 => topo.kill_master(),
    }
    topo.wait_promoted(old);
    // Settled: nothing queued or unacked, and every result in or none
    // new for longer than the visibility timeout (what was lost stays
    // lost); or, for a worker that never comes back, SETTLE_LIMIT after
    // the failover. Each look on a new connection: the sentinels close
    // the clients of a server they reconfigure.
    let look = || {
        let mut c = topo.master_conn();
        let done = succeeded(&mut c, &ids);
        let queued: usize = c.llen("celery").unwrap_or(usize::MAX);
        let unacked: usize = c.hlen("unacked").unwrap_or(usize::MAX);
        (done, queued, unacked)
    };
    let (failed_over, mut last, mut since) = (Instant::now(), 0, Instant::now());
    loop {
        let (done, queued, unacked) = look();
        if done != last {
            (last, since) = (done, Instant::now());
        }
        let idle = queued == 0 && unacked == 0;
        if (idle && (done == TASKS || since.elapsed() > Duration::from_secs(VISIBILITY + 5)))
            || failed_over.elapsed() > SETTLE_LIMIT
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // polling a condition
    }
    let log = w.stop_and_log();
    let ran = runs(&[&log], "greenpool.sleep", &ids);
    let (results, queued, unacked) = look();
    Some(Counts {
        before,
        results,
        twice: ran.values().filter(|&&n| n > 1).count(),
        never: ran.values().filter(|&&n| n == 0).count(),
        queued,
        unacked,
    })
}

/// Runs one scenario and prints its row; `None` when it was skipped.
fn row(worker: Worker, failover: Failover, late: bool) -> Option<Counts> {
    let python = support::python();
    if worker == Worker::Celery && python.is_none() {
        return None;
    }
    let c = scenario(python.as_deref(), worker, failover, late)?;
    println!(
        "{failover:?} failover, {worker:?}, {} acks: {TASKS} tasks, {} done before; after: {} \
         results, {} lost, {} ran twice, {} never ran, {} queued, {} unacked",
        if late { "late" } else { "early" },
        c.before,
        c.results,
        c.lost(),
        c.twice,
        c.never,
        c.queued,
        c.unacked
    );
    Some(c)
}

/// A scenario that must lose nothing and leave nothing behind.
fn loses_nothing(worker: Worker, failover: Failover, late: bool) {
    if let Some(c) = row(worker, failover, late) {
        assert_eq!((c.lost(), c.queued, c.unacked), (0, 0, 0), "{c:?}");
    }
}

/// A scenario whose counts are measured, not promised: what it leaves
/// queued or unacked must still be nothing (a message the failover
/// left behind is taken again).
fn measured(worker: Worker, failover: Failover, late: bool) {
    if let Some(c) = row(worker, failover, late) {
        if matches!(worker, Worker::Greenpool { .. }) {
            assert_eq!((c.queued, c.unacked), (0, 0), "{c:?}");
        }
    }
}

const fn gp(sync_replicas: u32) -> Worker {
    Worker::Greenpool { sync_replicas }
}

// `SENTINEL FAILOVER` under load: with `--sync-replicas 2` (every
// replica) greenpool loses nothing with early or late acks. Without it
// greenpool relies on the `+switch-master` watcher and the READONLY
// reply; those counts, and Celery's, are measured.

#[test]
fn planned_failover_sync_replicas_early_acks_loses_nothing() {
    loses_nothing(gp(2), Failover::Planned, false);
}

#[test]
fn planned_failover_sync_replicas_late_acks_loses_nothing() {
    loses_nothing(gp(2), Failover::Planned, true);
}

#[test]
fn planned_failover_early_acks() {
    measured(gp(0), Failover::Planned, false);
}

#[test]
fn planned_failover_late_acks() {
    measured(gp(0), Failover::Planned, true);
}

#[test]
fn planned_failover_celery_early_acks() {
    measured(Worker::Celery, Failover::Planned, false);
}

#[test]
fn planned_failover_celery_late_acks() {
    measured(Worker::Celery, Failover::Planned, true);
}

// `kill -9` of the master under load: with `--sync-replicas 1`
// greenpool loses nothing; without it, and for Celery, Redis's
// asynchronous replication loses what the dead master never sent on:
// measured.

#[test]
fn unplanned_failover_sync_replicas_early_acks_loses_nothing() {
    loses_nothing(gp(1), Failover::Kill9, false);
}

#[test]
fn unplanned_failover_sync_replicas_late_acks_loses_nothing() {
    loses_nothing(gp(1), Failover::Kill9, true);
}

#[test]
fn unplanned_failover_early_acks() {
    measured(gp(0), Failover::Kill9, false);
}

#[test]
fn unplanned_failover_late_acks() {
    measured(gp(0), Failover::Kill9, true);
}

#[test]
fn unplanned_failover_celery_early_acks() {
    measured(Worker::Celery, Failover::Kill9, false);
}

#[test]
fn unplanned_failover_celery_late_acks() {
    measured(Worker::Celery, Failover::Kill9, true);
}
