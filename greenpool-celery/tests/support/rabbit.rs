//! A private RabbitMQ node per test: its own node name, ports, mnesia and
//! log directories under a temp dir, so that parallel tests and runs never
//! share state. Skips loudly without rabbitmq-server, and fails instead
//! when GREENPOOL_REQUIRE_RABBITMQ=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::free_port;

/// Where Debian's package puts the scripts that run without `su`.
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// Whether a missing rabbitmq-server must fail the test.
pub fn required() -> bool {
    std::env::var("GREENPOOL_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1")
}

fn skip(what: &str) {
    assert!(!required(), "GREENPOOL_REQUIRE_RABBITMQ=1 but {what}");
    eprintln!("\n*** SKIPPED: {what} (set GREENPOOL_REQUIRE_RABBITMQ=1 to make this fail) ***\n");
}

fn script(name: &str) -> PathBuf {
    let own = Path::new(BIN).join(name);
    if own.exists() {
        own
    } else {
        PathBuf::from(name)
    }
}

/// A rabbitmq-server node on free loopback ports, killed on drop.
pub struct RabbitNode {
    child: Option<Child>,
    dir: PathBuf,
    pub node: String,
    pub port: u16,
    dist_port: u16,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl RabbitNode {
    /// Starts one and waits until it serves, or returns `None` (after a
    /// loud note) when rabbitmq-server is not installed.
    pub fn start() -> Option<Self> {
        let installed = Path::new(BIN).join("rabbitmq-server").exists()
            || Command::new("sh")
                .args(["-c", "command -v rabbitmq-server"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !installed {
            skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)");
            return None;
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let node = format!("gp{}x{n}@localhost", std::process::id());
        let dir = std::env::temp_dir().join(format!("greenpool-rabbit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The node may run as the rabbitmq user on some installs.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let mut me = RabbitNode {
            child: None,
            dir,
            node,
            port: free_port(),
            dist_port: free_port(),
        };
        me.spawn();
        Some(me)
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env_remove("RABBITMQ_CONFIG_FILE");
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let mut cmd = Command::new(script("rabbitmq-server"));
        self.env(&mut cmd);
        let log = std::fs::File::create(self.dir.join("server.out")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Handshake: `rabbitmqctl wait` returns once the node's apps run.
        let ok = self
            .ctl(&[
                "wait",
                &self.dir.join("pid").to_string_lossy(),
                "--timeout",
                "120",
            ])
            .is_some();
        assert!(
            ok,
            "rabbitmq node {} did not start; see {}",
            self.node,
            self.dir.join("server.out").display()
        );
    }

    /// Runs `rabbitmqctl -n NODE args...`; its stdout when it succeeds.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new(script("rabbitmqctl"));
        self.env(&mut cmd);
        let out = cmd.arg("-n").arg(&self.node).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `amqp://guest:guest@127.0.0.1:<port>//`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.port)
    }

    /// Messages ready and unacked in `queue` (`None` when it does not
    /// exist).
    pub fn queue_counts(&self, queue: &str) -> Option<(u64, u64)> {
        let out = self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])?;
        out.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == queue).then_some(())?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
    }

    /// Stops the node cleanly (durable queues and persistent messages are
    /// kept on disk).
    pub fn stop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Kills the node's Erlang VM with SIGKILL.
    pub fn kill(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped or killed node again on the same ports and data.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops the node, waits `outage`, and starts it again.
    pub fn restart(&mut self, outage: std::time::Duration) {
        self.stop();
        std::thread::sleep(outage); // the outage itself, not a synchronisation
        self.spawn();
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
