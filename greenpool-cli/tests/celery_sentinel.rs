//! `greenpool worker` on Redis Sentinel: one master, one replica and three
//! sentinels on loopback, started by the test; the worker reaches the
//! master through `sentinel://` URLs and Celery's transport options, and
//! follows a failover. Prints its counts.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use greenpool_celery::TaskMessage;
use redis::Commands;
use serde_json::{json, Map};
use support::faulty::succeeded;
use support::process::Proc;
use support::RedisServer;

const DEADLINE: Duration = Duration::from_secs(120);
const MASTER: &str = "mymaster";

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling a condition
    }
}

/// A redis-server in sentinel mode, killed on drop.
struct SentinelServer {
    child: Child,
    port: u16,
    _dir: Dir,
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl SentinelServer {
    /// A sentinel monitoring the master on `master_port` (quorum 2, down
    /// after 1 s), waited until it answers.
    fn start(master_port: u16) -> Self {
        let port = support::free_port();
        let dir =
            std::env::temp_dir().join(format!("greenpool-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 10000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = SentinelServer {
            child,
            port,
            _dir: Dir(dir),
        };
        until("a sentinel answering", || s.conn().is_some());
        s
    }

    fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection()
            .ok()
    }

    /// The master's port as this sentinel names it.
    fn master_port(&self) -> Option<u16> {
        let mut c = self.conn()?;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(&mut c)
            .ok()?;
        port.parse().ok()
    }
}

/// How many replicas `server` has online.
fn replicas_online(server: &RedisServer) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut server.conn(0))
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

/// A master, a replica of it, and three sentinels that see both.
fn topology() -> Option<(RedisServer, RedisServer, Vec<SentinelServer>)> {
    let master = RedisServer::start()?;
    let replica = RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &master.port.to_string(),
    ])?;
    until("the replica online", || replicas_online(&master) == 1);
    let sentinels: Vec<SentinelServer> =
        (0..3).map(|_| SentinelServer::start(master.port)).collect();
    until("every sentinel seeing the replica and the others", || {
        sentinels.iter().all(|s| {
            let Some(mut c) = s.conn() else { return false };
            let master: Vec<(String, String)> = redis::cmd("SENTINEL")
                .arg("master")
                .arg(MASTER)
                .query::<Vec<String>>(&mut c)
                .map(|flat| {
                    flat.chunks(2)
                        .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
                        .collect()
                })
                .unwrap_or_default();
            let get = |k: &str| master.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            get("num-slaves").as_deref() == Some("1")
                && get("num-other-sentinels").as_deref() == Some("2")
        })
    });
    Some((master, replica, sentinels))
}

/// The `sentinel://` URL of the three sentinels, database `db`.
fn url(sentinels: &[SentinelServer], db: u8) -> String {
    sentinels
        .iter()
        .map(|s| format!("sentinel://127.0.0.1:{}/{db}", s.port))
        .collect::<Vec<_>>()
        .join(";")
}

/// A connection to whichever server is master now.
fn master_conn(sentinels: &[SentinelServer], db: u8) -> redis::Connection {
    let port = sentinels[0].master_port().unwrap();
    redis::Client::open(format!("redis://127.0.0.1:{port}/{db}"))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A planned failover (`SENTINEL FAILOVER`) while the worker drains 2,000
/// late-ack tasks through Sentinel: it reconnects to the new master, and
/// every task gets its result, none left queued or unacked (what the old
/// master lost comes back through the visibility timeout).
#[test]
fn a_planned_failover_under_load_loses_nothing() {
    let Some((master, replica, sentinels)) = topology() else {
        return;
    };
    let n = 2000;
    let mut conn = master.conn(0);
    let mut ids = Vec::with_capacity(n);
    let mut pipe = redis::pipe();
    for _ in 0..n {
        let m = TaskMessage::new("greenpool.sleep", vec![json!(0.005)], Map::new());
        ids.push(m.headers.id.clone());
        pipe.cmd("LPUSH")
            .arg("celery")
            .arg(m.encode().unwrap())
            .ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", &url(&sentinels, 0)])
        .args([
            "--broker-transport-options",
            &format!("{{\"master_name\": \"{MASTER}\"}}"),
        ])
        .args([
            "-n",
            "sentinel@%h",
            "--loglevel",
            "info",
            "-c",
            "20",
            "--acks-late",
        ])
        .args(["--broker-connection-max-retries", "0"])
        // Writes the old master took after the replica was promoted are
        // lost by Redis (asynchronous replication); the late-ack messages
        // they concerned come back after the visibility timeout.
        .args(["--visibility-timeout", "2", "--restore-interval", "0.5"])
        .env_remove("RUST_LOG");
    let w = Proc::spawn("worker", cmd);
    w.wait_for(" ready.");
    until("the first 300 results", || {
        succeeded(&mut conn, &ids) >= 300
    });
    let before = succeeded(&mut conn, &ids);
    let mut s = sentinels[0].conn().unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("failover")
        .arg(MASTER)
        .query(&mut s)
        .unwrap();
    until("the replica promoted", || {
        sentinels[0].master_port() == Some(replica.port)
    });
    let mut now = master_conn(&sentinels, 0);
    until("every result on the new master", || {
        succeeded(&mut now, &ids) == n
    });
    until("nothing left unacked", || {
        now.hlen::<_, usize>("unacked").unwrap() == 0
            && now.llen::<_, usize>("celery").unwrap() == 0
    });
    let log = w.stop_and_log();
    let named = log
        .iter()
        .filter(|l| l.contains("the sentinels name"))
        .count();
    println!(
        "planned failover, late acks: {n} sent, {before} done before the failover, {} results \
         after on the new master, {} lost; the worker logged {named} new master(s)",
        succeeded(&mut now, &ids),
        n - succeeded(&mut now, &ids)
    );
    assert!(named >= 1, "the worker followed the failover");
}

/// Transport options the worker cannot honour, and a sentinel URL
/// without a master name, stop it at start with the reason.
#[test]
fn unusable_transport_options_are_refused_with_the_reason() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
            .arg("worker")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--broker-transport-options", r#"{"max_connections": 5}"#]);
    assert!(!ok && err.contains("max_connections"), "{err}");
    let (ok, err) = run(&[
        "--broker",
        "sentinel://127.0.0.1:1/0",
        "--broker-connection-retry-on-startup",
        "false",
    ]);
    assert!(!ok && err.contains("master_name"), "{err}");
}
