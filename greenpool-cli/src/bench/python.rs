//! `--python`: runs `bench/python/eventlet_pool.py` (built into this binary)
//! on Celery's eventlet `TaskPool` and reads its one JSON object.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The Python driver, written to a temporary file at run time.
const DRIVER: &str = include_str!("../../../bench/python/eventlet_pool.py");

/// How to get a Python that can run the driver.
const INSTALL: &str = "install them with `python3 -m venv ~/venv-greenpool-bench && \
     ~/venv-greenpool-bench/bin/pip install celery eventlet`, then pass \
     `--python-bin ~/venv-greenpool-bench/bin/python` (or set GREENPOOL_BENCH_PYTHON)";

/// Workloads the Python driver knows.
const KNOWN: [&str; 6] = [
    "throughput",
    "sleepers",
    "accept_latency",
    "terminate",
    "resize",
    "timer",
];

/// Removes the driver file when the run ends.
struct TempScript(PathBuf);

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the driver with `python` on the chosen workloads; the error says
/// what is missing and how to install it.
pub(crate) async fn run(
    python: &Path,
    quick: bool,
    workloads: &[&str],
) -> Result<serde_json::Value, String> {
    let only: Vec<&str> = workloads
        .iter()
        .copied()
        .filter(|w| KNOWN.contains(w))
        .collect();
    if only.is_empty() {
        return Err("no chosen workload has a Python twin".into());
    }
    let path = std::env::temp_dir().join(format!(
        "greenpool-bench-eventlet-{}.py",
        std::process::id()
    ));
    std::fs::write(&path, DRIVER)
        .map_err(|e| format!("cannot write the Python driver to {}: {e}", path.display()))?;
    let script = TempScript(path);

    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script.0);
    if quick {
        cmd.arg("--quick");
    }
    if only.len() < KNOWN.len() {
        for w in &only {
            cmd.args(["--only", w]);
        }
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => format!(
                "{} not found: install python3 (3.8 or newer), then celery and eventlet; {INSTALL}",
                python.display()
            ),
            _ => format!("cannot run {}: {e}", python.display()),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        return Err(format!(
            "celery or eventlet is missing for {}; {INSTALL}",
            python.display()
        ));
    }
    if !out.status.success() {
        return Err(format!(
            "the Python driver failed ({}): {}",
            out.status,
            stderr.trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("the Python driver printed no JSON: {}", stderr.trim()))?;
    serde_json::from_str(line).map_err(|e| format!("the Python driver printed bad JSON: {e}"))
}
