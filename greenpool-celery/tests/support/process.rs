//! A child process (a `greenpool worker`, a Python worker, Flower) whose
//! output lines are echoed and can be waited on: the tests' handshakes are
//! the processes' own log lines, never a sleep.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for a line or an exit before it fails.
const DEADLINE: Duration = Duration::from_secs(90);

/// A child process, killed on drop.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line so far.
    log: Arc<Mutex<Vec<String>>>,
    name: &'static str,
}

impl Proc {
    /// Starts `cmd`, reading its stderr and stdout line by line (each
    /// line echoed with `name` in front).
    pub fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let outputs: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for out in outputs.into_iter().flatten() {
            let (tx, all) = (tx.clone(), Arc::clone(&log));
            std::thread::spawn(move || {
                // Raw bytes, read as text leniently: a line that is not
                // UTF-8 (a cut in the middle of a character) must show up,
                // not stop the reader.
                let mut reader = BufReader::new(out);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']).to_owned();
                    buf.clear();
                    eprintln!("[{name}] {line}");
                    all.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            lines: rx,
            log,
            name,
        }
    }

    /// Waits for a line containing `needle`; returns the lines read
    /// before it.
    pub fn wait_for(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return seen,
                Ok(line) => seen.push(line),
                Err(e) => panic!("{}: no line with {needle:?} ({e})", self.name),
            }
        }
    }

    /// The next line, waiting for it until `deadline`.
    pub fn next_line_before(&self, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{}: log ended or stalled ({e})", self.name))
    }

    /// Waits until, for each entry of `wanted`, a line containing all its
    /// parts was read (entries in any order).
    pub fn wait_for_all(&self, wanted: &[&[&str]]) {
        let mut left: Vec<&[&str]> = wanted.to_vec();
        let deadline = Instant::now() + DEADLINE;
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(line) => left.retain(|parts| !parts.iter().all(|p| line.contains(p))),
                Err(e) => panic!("{}: no line with {left:?} ({e})", self.name),
            }
        }
    }

    /// The lines logged since the last wait, without waiting.
    pub fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// How many lines so far (read by a wait or not) contain `needle`.
    pub fn lines_with(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Every line so far, read by a wait or not.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (as `kill` spells it: `-TERM`, `-9`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// SIGTERM, waits for a clean exit, and returns the lines not read
    /// yet (the readers end with the pipes, so nothing is missed).
    pub fn stop_and_log(mut self) -> Vec<String> {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
        let (_, none) = mpsc::channel();
        std::mem::replace(&mut self.lines, none).iter().collect()
    }

    /// Waits for the process to exit by itself (after a remote shutdown,
    /// or when its broker is gone), failing after the deadline.
    pub fn wait_exit(self) -> ExitStatus {
        self.wait_exit_and_log().0
    }

    /// [`Proc::wait_exit`], and every line it logged that no wait read
    /// (the readers end with the pipes, so nothing is missed).
    pub fn wait_exit_and_log(mut self) -> (ExitStatus, Vec<String>) {
        let mut lines = Vec::new();
        let Some(status) = self.exit_within(DEADLINE, &mut lines) else {
            panic!("{} did not exit", self.name);
        };
        let (_, none) = mpsc::channel();
        lines.extend(std::mem::replace(&mut self.lines, none).iter());
        (status, lines)
    }

    /// Waits up to `limit` for the process to exit by itself; the lines
    /// read meanwhile go to `lines`. `None` if it still runs.
    pub fn exit_within(&mut self, limit: Duration, lines: &mut Vec<String>) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Its output is the handshake: the next line, or a tick when
            // it has nothing more to say (an exit is not a line).
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                lines.push(line);
            }
        }
    }
}

/// Runs `cmd` to its end and returns its stdout; fails the test, showing
/// both outputs, when it exits non-zero.
pub fn stdout_of(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many log lines of `logs` say task `name[id]` succeeded, per id of
/// `ids` (0 for one that never ran): the line a greenpool or a Python
/// worker writes at `info` for each run.
pub fn runs(
    logs: &[&[String]],
    name: &str,
    ids: &[String],
) -> std::collections::HashMap<String, usize> {
    let mut n: std::collections::HashMap<String, usize> =
        ids.iter().map(|i| (i.clone(), 0)).collect();
    let prefix = format!("{name}[");
    for line in logs.iter().flat_map(|l| l.iter()) {
        let Some(rest) = line.split(&prefix).nth(1) else {
            continue;
        };
        let Some((id, tail)) = rest.split_once(']') else {
            continue;
        };
        if tail.trim_start().starts_with("succeeded") {
            if let Some(c) = n.get_mut(id) {
                *c += 1;
            }
        }
    }
    n
}
