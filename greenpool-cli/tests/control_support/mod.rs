//! Helpers of the remote-control tests: child processes (greenpool and
//! Python workers, Flower) whose logs are echoed and waited on, and the
//! Python scenarios of tests/python/control.py.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "../../../greenpool-celery/tests/support/mod.rs"]
pub mod support;

pub use support::RedisServer;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A child process whose output lines are echoed and can be waited for.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: &'static str,
}

impl Proc {
    /// Starts `cmd`, reading its stderr (and stdout) line by line.
    pub fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        for out in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            lines: rx,
            name,
        }
    }

    /// Waits for an output line containing `needle` (a handshake on the
    /// process's own log), failing after a generous deadline.
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("{}: no line with {needle:?} ({e})", self.name),
            }
        }
    }

    /// Waits for the process to exit by itself (e.g. after a remote
    /// shutdown), failing after a generous deadline.
    pub fn wait_exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            // Polling the exit of another process: there is no handshake
            // to wait on across processes short of its exit status.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let out = Command::new(python)
        .arg(script)
        .arg(first)
        .arg(server.url(0))
        .args(rest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
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
