//! `greenpool bench worker`: how fast `greenpool worker` drains a queue of
//! `greenpool.add` messages with results stored, against Python Celery's
//! eventlet worker on the same Redis in the same run (see
//! `worker_bench_redis`, with the `redis` feature) or, with `--broker
//! amqp://...`, on the same RabbitMQ (see `worker_bench_amqp`). This file
//! holds what both share (the arguments, the Python twin, the table);
//! `worker_bench_run.rs` picks the broker and runs.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// Arguments of `greenpool bench worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerBenchArgs {
    /// Messages to pre-enqueue for each worker.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) tasks: usize,
    /// Pool limit of both workers.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub(crate) concurrency: usize,
    /// Redis to use (its databases 0 and 1 are flushed); by default a
    /// private redis-server is started on a free port.
    #[arg(long)]
    pub(crate) redis: Option<String>,
    /// An AMQP broker (amqp://user:pass@host:port/vhost) to bench on
    /// instead of Redis; results then travel through rpc://.
    #[arg(long)]
    pub(crate) broker: Option<String>,
    /// Python with celery and eventlet for the baseline (default:
    /// $GREENPOOL_PYTHON, else .venv/bin/python); `none` skips it.
    #[arg(long)]
    pub(crate) python: Option<String>,
    /// Time chords instead of single tasks (Redis): `--chords` chords of
    /// `--chord-size` `greenpool.add` parts, each joined into a
    /// `greenpool.echo` body; chords per second and Redis commands per
    /// chord.
    #[arg(long, conflicts_with = "broker")]
    pub(crate) canvas: bool,
    /// Chords with --canvas.
    #[arg(long, default_value_t = 1000, requires = "canvas")]
    pub(crate) chords: usize,
    /// Parts of each chord with --canvas.
    #[arg(long, default_value_t = 10, requires = "canvas")]
    pub(crate) chord_size: usize,
    /// greenpool's worker waits for this many replicas after each batch
    /// of results and acks (`--sync-replicas`, 1 s timeout); needs
    /// `--redis` naming a master with that many replicas.
    #[arg(long, default_value_t = 0, requires = "redis")]
    pub(crate) sync_replicas: u32,
}

/// One worker's figures.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) name: &'static str,
    pub(crate) tasks: usize,
    /// First to last `date_done`.
    pub(crate) elapsed: Duration,
    pub(crate) commands: u64,
    pub(crate) round_trips: Option<u64>,
    /// Redis commands per name, most first (only the Redis table shows them).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) top: Vec<(String, u64)>,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub(crate) fn find_python(arg: &Option<String>) -> Option<PathBuf> {
    let candidate = match arg.as_deref() {
        Some("none") => return None,
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("GREENPOOL_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".venv/bin/python")),
    };
    let ok = Command::new(&candidate)
        .args(["-c", "import celery, eventlet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // The Python worker runs in bench/python: a relative path would not
    // name the same file from there (made absolute, not resolved: a
    // venv's python is a symlink whose target lacks the venv).
    ok.then(|| std::path::absolute(&candidate).unwrap_or(candidate))
}

/// The broker-specific columns of the table: the rate's unit, what is
/// counted per task, the round trips per task, and what a run without
/// round trips shows.
pub(crate) struct Columns {
    pub(crate) rate: &'static str,
    pub(crate) per_task: &'static str,
    pub(crate) trips: &'static str,
    pub(crate) no_trips: &'static str,
}

/// The Python for the baseline run, if one with Celery and eventlet is
/// found; says on stdout that the baseline is skipped when none is.
pub(crate) fn baseline_python(arg: &Option<String>) -> Option<PathBuf> {
    let found = find_python(arg);
    if found.is_none() {
        println!("  (no Python with celery + eventlet: baseline skipped; set GREENPOOL_PYTHON)");
    }
    found
}

/// Prints one row per run, rates relative to the last run (the baseline).
pub(crate) fn print_table(runs: &[Run], columns: &Columns) {
    let base = runs.last().map_or(1.0, Run::rate);
    println!(
        "\n{:<20} {:>7} {:>9} {:>11} {:>9} {:>14} {:>20}",
        "worker", "tasks", "seconds", columns.rate, "ratio", columns.per_task, columns.trips
    );
    for r in runs {
        println!(
            "{:<20} {:>7} {:>9.3} {:>11.0} {:>8.1}x {:>14.2} {:>20}",
            r.name,
            r.tasks,
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.rate() / base,
            r.commands as f64 / r.tasks as f64,
            r.round_trips
                .map_or(columns.no_trips.to_owned(), |t| format!(
                    "{:.4}",
                    t as f64 / r.tasks as f64
                )),
        );
    }
}

/// Prints greenpool's rate over the baseline's, when both ran.
pub(crate) fn print_verdict(runs: &[Run]) {
    if let [greenpool, python] = runs {
        println!(
            "\ngreenpool / celery eventlet: {:.1}x",
            greenpool.rate() / python.rate()
        );
    }
}

/// Starts the baseline: `celery -A tasks worker -P eventlet` of
/// bench/python on `broker` with results in `backend`.
pub(crate) fn start_python_worker(
    python: &std::path::Path,
    concurrency: usize,
    broker: &str,
    backend: &str,
) -> anyhow::Result<std::process::Child> {
    Command::new(python)
        .args([
            "-m", "celery", "-A", "tasks", "worker", "-P", "eventlet", "-c",
        ])
        .arg(concurrency.to_string())
        .args([
            "-l",
            "warning",
            "-n",
            "bench@python",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ])
        .current_dir(twin_dir()?)
        .env("GREENPOOL_BROKER_URL", broker)
        .env("GREENPOOL_RESULT_BACKEND", backend)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the Python Celery worker")
}

/// Stops the baseline worker (SIGTERM, then waits for it).
pub(crate) fn stop_python_worker(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

pub(crate) fn twin_dir() -> anyhow::Result<PathBuf> {
    for base in [
        PathBuf::from("."),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    ] {
        let dir = base.join("bench/python");
        if dir.join("tasks.py").exists() {
            return Ok(dir);
        }
    }
    bail!("bench/python/tasks.py not found; run from the repository root")
}
