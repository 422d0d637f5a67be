//! Test helpers: a private redis-server per test, and the Python that has
//! Celery installed. Both skip loudly when missing, and fail instead when
//! GREENPOOL_REQUIRE_REDIS=1.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Whether missing Redis or Python must fail the test.
pub fn required() -> bool {
    std::env::var("GREENPOOL_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

fn skip(what: &str) {
    assert!(!required(), "GREENPOOL_REQUIRE_REDIS=1 but {what}");
    eprintln!("\n*** SKIPPED: {what} (set GREENPOOL_REQUIRE_REDIS=1 to make this fail) ***\n");
}

#[cfg(feature = "redis")]
pub mod faulty;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod rabbit;

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
    /// Its working directory, removed on drop.
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one, or returns `None` (after a loud note) when redis-server
    /// is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(&["--appendonly", "no"])
    }

    /// Starts one that writes every command to its AOF (`appendfsync
    /// always`) in a new temporary directory, so that a restart keeps
    /// everything; returns the directory too (for the caller to remove).
    pub fn start_with_aof(tag: &str) -> Option<(Self, String)> {
        let dir = std::env::temp_dir().join(format!(
            "greenpool-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.to_string_lossy().into_owned();
        let args = [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
        ];
        Some((Self::start_with(&args)?, dir))
    }

    /// Starts one with `extra` arguments (they come last and win).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn(free_port(), extra)
    }

    /// Stops the server with SIGTERM (it writes its AOF and exits), waits
    /// `outage`, and starts it again on the same port with the same
    /// arguments.
    pub fn restart(mut self, outage: std::time::Duration) -> Self {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM redis-server failed");
        self.child.wait().unwrap();
        std::thread::sleep(outage); // the outage itself, not a synchronisation
        let (port, extra) = (self.port, std::mem::take(&mut self.extra));
        std::mem::forget(self);
        Self::spawn(port, extra).expect("redis-server restarts")
    }

    fn spawn(port: u16, extra: Vec<String>) -> Option<Self> {
        // A directory of its own: a replica's full sync writes dump.rdb
        // there, and a server started in a directory holding one loads it.
        let dir =
            std::env::temp_dir().join(format!("greenpool-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
            ])
            .arg(&dir)
            .args(&extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                skip(&format!("redis-server cannot be started ({e}); install it with apt-get install redis-server"));
                return None;
            }
        };
        // Handshake: wait for the server's own readiness line.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => continue,
                _ => panic!("redis-server on port {port} exited before it was ready"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(RedisServer {
            child,
            port,
            extra,
            dir,
        })
    }

    /// `redis://127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The server's process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A synchronous connection for inspecting keys.
    #[cfg(feature = "redis")]
    pub fn conn(&self, db: u8) -> redis::Connection {
        redis::Client::open(self.url(db))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Python with Celery: $GREENPOOL_PYTHON, else <repo>/.venv/bin/python.
/// `None` (after a loud note) when neither exists or lacks Celery.
pub fn python() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidate = std::env::var_os("GREENPOOL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import celery, redis, amqp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(candidate)
    } else {
        skip(&format!(
            "no Python with celery[redis] at {} (set GREENPOOL_PYTHON)",
            candidate.display()
        ));
        None
    }
}

/// Spawns `worker.run()` and returns once the worker consumes (its `ready`
/// notification, enabled before the spawn so it cannot be missed), with
/// its shutdown handle and its task.
pub async fn run_until_ready(
    worker: greenpool_celery::Worker,
) -> (
    greenpool_celery::ShutdownHandle,
    tokio::task::JoinHandle<Result<greenpool_celery::WorkerReport, greenpool_celery::WorkerError>>,
) {
    let stop = worker.shutdown_handle();
    let ready = worker.ready();
    let notified = ready.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let running = tokio::spawn(worker.run());
    notified.await;
    (stop, running)
}
