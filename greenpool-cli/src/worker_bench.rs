//! `greenpool bench worker`: how fast `greenpool worker` drains a queue of
//! `greenpool.add` messages with results stored, against Python Celery's
//! eventlet worker on the same Redis in the same run (see
//! `worker_bench_redis`, with the `redis` feature) or, with `--broker
//! amqp://...`, on the same RabbitMQ (see `worker_bench_amqp`).

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
    ok.then_some(candidate)
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

/// Runs the bench and prints the table.
pub(crate) async fn run(args: WorkerBenchArgs) -> anyhow::Result<()> {
    if let Some(broker) = args.broker.as_deref().filter(|b| !b.starts_with("redis")) {
        return crate::worker_bench_amqp::run(broker, args.tasks, args.concurrency, &args.python)
            .await;
    }
    redis_bench(&args).await
}

#[cfg(feature = "redis")]
use crate::worker_bench_redis::run as redis_bench;

/// Without the `redis` feature only the AMQP bench is built.
#[cfg(not(feature = "redis"))]
async fn redis_bench(_args: &WorkerBenchArgs) -> anyhow::Result<()> {
    bail!(
        "the Redis worker bench needs greenpool built with the `redis` cargo feature; \
         bench on RabbitMQ with --broker amqp://..."
    )
}

/// Entry point of the subcommand: a runtime, then [`run`].
pub(crate) fn main(args: WorkerBenchArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(args))
}
