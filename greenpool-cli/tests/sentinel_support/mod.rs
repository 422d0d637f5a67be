//! Redis Sentinel for the tests: a master, its replicas and three
//! sentinels on loopback, started by the test and killed on drop.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../greenpool-celery/tests/support/mod.rs"]
pub mod support;

use support::RedisServer;

/// The name the sentinels monitor the master under.
pub const MASTER: &str = "mymaster";
const DEADLINE: Duration = Duration::from_secs(180);

/// Polls `cond` (a condition with a deadline, not a timing assumption).
pub fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling a condition
    }
}

/// A temporary directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server in sentinel mode, killed on drop.
pub struct SentinelServer {
    child: Child,
    pub port: u16,
    _dir: Dir,
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SentinelServer {
    /// A sentinel monitoring the master on `master_port` (quorum 2, down
    /// after 1 s), waited until it answers.
    pub fn start(master_port: u16) -> Self {
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

    pub fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection()
            .ok()
    }

    /// The master's port as this sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let mut c = self.conn()?;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(&mut c)
            .ok()?;
        port.parse().ok()
    }

    /// This sentinel's view of the master, as field/value pairs.
    pub fn master_fields(&self) -> Vec<(String, String)> {
        let Some(mut c) = self.conn() else {
            return Vec::new();
        };
        redis::cmd("SENTINEL")
            .arg("master")
            .arg(MASTER)
            .query::<Vec<String>>(&mut c)
            .map(|flat| {
                flat.chunks(2)
                    .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
                    .collect()
            })
            .unwrap_or_default()
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

/// A master, its replicas, and three sentinels that see them all.
pub struct Topology {
    pub master: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<SentinelServer>,
}

impl Topology {
    pub fn start(replicas: usize) -> Option<Self> {
        let master = RedisServer::start()?;
        let port = master.port.to_string();
        let replicas: Vec<RedisServer> = (0..replicas)
            .map(|_| {
                RedisServer::start_with(&["--appendonly", "no", "--replicaof", "127.0.0.1", &port])
                    .unwrap()
            })
            .collect();
        until("the replicas online", || {
            replicas_online(&master) == replicas.len()
        });
        let sentinels: Vec<SentinelServer> =
            (0..3).map(|_| SentinelServer::start(master.port)).collect();
        until("every sentinel seeing the replicas and the others", || {
            sentinels.iter().all(|s| {
                let fields = s.master_fields();
                let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                get("num-slaves") == Some(replicas.len().to_string())
                    && get("num-other-sentinels").as_deref() == Some("2")
            })
        });
        Some(Topology {
            master,
            replicas,
            sentinels,
        })
    }

    /// The `sentinel://` URL of the three sentinels, database `db`.
    pub fn url(&self, db: u8) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("sentinel://127.0.0.1:{}/{db}", s.port))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Kills the first master with SIGKILL.
    pub fn kill_master(&self) {
        let ok = Command::new("kill")
            .args(["-KILL", &self.master.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -KILL of the master");
    }

    /// Waits until every sentinel names a master other than the one on
    /// port `old`.
    pub fn wait_promoted(&self, old: u16) {
        until("a replica promoted", || {
            self.sentinels
                .iter()
                .all(|s| s.master_port().is_some_and(|p| p != old))
        });
    }

    /// A connection to whichever server the first sentinel names master.
    pub fn master_conn(&self) -> redis::Connection {
        let port = self.sentinels[0].master_port().unwrap();
        redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}
