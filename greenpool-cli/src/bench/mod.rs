//! `greenpool bench`: the standard workloads (the names and sizes of
//! `bench/python/eventlet_pool.py`), each run on greenpool and on its
//! bare-tokio twin in the same run, reported as ratios against targets.
//!
//! Speed workloads run in this process, one side after the other on the same
//! runtime. Memory workloads (`sleepers`, `sleepers_1m`, `timer`) run each
//! side in a fresh child process of this binary (`bench --child NAME --side
//! SIDE`), so that RSS growth is not hidden by memory an earlier workload
//! freed. `--python` adds Celery's eventlet pool, driven by the Python twin.

mod baseline;
mod memory;
mod params;
mod pool_side;
mod probe;
mod python;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use params::Sizes;

/// One side's figures for one workload: figure key → value.
pub(crate) type Figures = BTreeMap<String, f64>;

/// Builds [`Figures`] from pairs.
pub(crate) fn figures(pairs: &[(&str, f64)]) -> Figures {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Arguments of `greenpool bench`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    /// `greenpool bench worker`: the Celery worker bench instead.
    #[command(subcommand)]
    target: Option<BenchTarget>,
    /// Smaller sizes, well under 20 s in all (skips the 1,000,000-job run).
    #[arg(long)]
    quick: bool,
    /// Run only this workload (repeatable).
    #[arg(long, value_name = "NAME", value_enum)]
    only: Vec<Workload>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also run Celery's eventlet TaskPool (bench/python/eventlet_pool.py)
    /// and add greenpool's ratio to it.
    #[arg(long)]
    python: bool,
    /// The Python interpreter for --python; it needs celery and eventlet.
    #[arg(long, env = "GREENPOOL_BENCH_PYTHON", default_value = "python3")]
    python_bin: PathBuf,
    /// Runs one side of one workload here and prints its figures (used by
    /// the bench itself for the memory workloads).
    #[arg(long, hide = true, value_enum, requires = "side")]
    child: Option<Workload>,
    /// The side for --child.
    #[arg(long, hide = true, value_enum)]
    side: Option<Side>,
}

/// Benches other than the pool workloads.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchTarget {
    /// Time `greenpool worker` draining 20,000 tasks against Python
    /// Celery's eventlet worker on the same Redis.
    Worker(crate::worker_bench::WorkerBenchArgs),
}

/// The standard workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub(crate) enum Workload {
    /// 100,000 trivial jobs at limit 1,000: jobs/s.
    Throughput,
    /// 10,000 jobs parked in a 1 s sleep: wall time and RSS per parked job.
    Sleepers,
    /// 1,000,000 parked jobs: RSS per parked job (full run only).
    #[value(name = "sleepers_1m")]
    Sleepers1m,
    /// 20,000 jobs at limit 100: apply → accept callback latency.
    AcceptLatency,
    /// 10,000 parked jobs killed one by one: kills/s.
    Terminate,
    /// 10,000 grow(1)/shrink(1) calls while jobs run: ops/s.
    Resize,
    /// 1,000,000 one-shot timer entries scheduled then cancelled.
    Timer,
}

impl Workload {
    const ALL: [Workload; 7] = [
        Workload::Throughput,
        Workload::Sleepers,
        Workload::Sleepers1m,
        Workload::AcceptLatency,
        Workload::Terminate,
        Workload::Resize,
        Workload::Timer,
    ];

    /// The name shared with the Python driver.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Throughput => "throughput",
            Workload::Sleepers => "sleepers",
            Workload::Sleepers1m => "sleepers_1m",
            Workload::AcceptLatency => "accept_latency",
            Workload::Terminate => "terminate",
            Workload::Resize => "resize",
            Workload::Timer => "timer",
        }
    }

    /// Measures memory, so each side runs in a fresh process.
    fn isolated(self) -> bool {
        matches!(
            self,
            Workload::Sleepers | Workload::Sleepers1m | Workload::Timer
        )
    }

    /// Runs per side: the short speed workloads run five times each,
    /// alternating sides, and report the median of each figure.
    fn rounds(self) -> u32 {
        if self.isolated() {
            1
        } else {
            5
        }
    }
}

/// Which implementation runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Side {
    /// greenpool's `TaskPool` (and `Timer`).
    Greenpool,
    /// The bare-tokio twin.
    Baseline,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Greenpool => "greenpool",
            Side::Baseline => "baseline",
        }
    }
}

/// Both sides' figures for one workload (an error text when a side failed).
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Pair {
    #[serde(serialize_with = "side_json")]
    greenpool: Option<Result<Figures, String>>,
    #[serde(serialize_with = "side_json")]
    baseline: Option<Result<Figures, String>>,
}

/// A side in the JSON report: its figures, `{"error": ...}`, or null.
fn side_json<S: serde::Serializer>(
    side: &Option<Result<Figures, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    match side {
        None => s.serialize_none(),
        Some(Ok(figures)) => figures.serialize(s),
        Some(Err(e)) => BTreeMap::from([("error", e)]).serialize(s),
    }
}

impl Pair {
    fn side(&self, side: Side) -> Option<&Figures> {
        let r = match side {
            Side::Greenpool => &self.greenpool,
            Side::Baseline => &self.baseline,
        };
        r.as_ref().and_then(|r| r.as_ref().ok())
    }
}

/// Runs `greenpool bench` on a multi-threaded runtime with one worker per
/// core (tokio's default, as a user's `#[tokio::main]` would have).
pub(crate) fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchTarget::Worker(worker_args)) = args.target.take() {
        return crate::worker_bench_run::main(worker_args);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    let sizes = Sizes::get(args.quick);
    if let Some(workload) = args.child {
        let side = args.side.unwrap_or(Side::Greenpool);
        // The parked jobs of `sleepers_1m` are left to the process exit.
        match run_here(workload, side, sizes).await {
            Ok(figures) => {
                println!("{}", serde_json::to_string(&figures)?);
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(1);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; figures are meaningless. Use \
             `cargo run --release -p greenpool-cli -- bench`"
        );
    }
    let chosen: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.contains(w))
        .filter(|w| !(args.quick && *w == Workload::Sleepers1m && !args.only.contains(w)))
        .collect();

    let steps = chosen
        .iter()
        .map(|w| u64::from(w.rounds()) * 2)
        .sum::<u64>()
        + u64::from(args.python);
    let bar = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut results: BTreeMap<Workload, Pair> = BTreeMap::new();
    for &workload in &chosen {
        let rounds = workload.rounds();
        let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
        let mut failed: [Option<String>; 2] = [None, None];
        for round in 1..=rounds {
            for (k, side) in [Side::Baseline, Side::Greenpool].into_iter().enumerate() {
                if failed[k].is_some() {
                    bar.inc(1);
                    continue;
                }
                bar.set_message(format!(
                    "{} on {} (round {round}/{rounds})",
                    workload.name(),
                    side.name()
                ));
                let r = if workload.isolated() {
                    run_child(workload, side, args.quick).await
                } else {
                    run_here(workload, side, sizes).await
                };
                match r {
                    Ok(f) => runs[k].push(f),
                    Err(e) => {
                        let e = format!("{e:#}");
                        bar.suspend(|| eprintln!("{} on {}: {e}", workload.name(), side.name()));
                        failed[k] = Some(e);
                    }
                }
                bar.inc(1);
            }
        }
        let [baseline_runs, greenpool_runs] = runs;
        let [baseline_err, greenpool_err] = failed;
        let pair = Pair {
            baseline: Some(baseline_err.map_or_else(|| Ok(median(&baseline_runs)), Err)),
            greenpool: Some(greenpool_err.map_or_else(|| Ok(median(&greenpool_runs)), Err)),
        };
        results.insert(workload, pair);
    }
    let python = if args.python {
        bar.set_message("Celery's eventlet pool (python)");
        let names: Vec<&str> = chosen.iter().map(|w| w.name()).collect();
        let r = python::run(&args.python_bin, args.quick, &names).await;
        bar.inc(1);
        Some(r)
    } else {
        None
    };
    bar.finish_and_clear();

    let report = report::Report::new(args.quick, &chosen, &results, python);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&results))?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The median of each figure over the runs (the upper one of an even count).
fn median(runs: &[Figures]) -> Figures {
    let mut out = Figures::new();
    for key in runs.iter().flat_map(|f| f.keys()) {
        if out.contains_key(key) {
            continue;
        }
        let mut values: Vec<f64> = runs.iter().filter_map(|f| f.get(key)).copied().collect();
        values.sort_by(f64::total_cmp);
        out.insert(key.clone(), values[values.len() / 2]);
    }
    out
}

/// Runs one side of one workload in this process.
async fn run_here(workload: Workload, side: Side, sizes: Sizes) -> anyhow::Result<Figures> {
    match (workload, side) {
        (Workload::Throughput, Side::Baseline) => baseline::throughput(sizes.throughput).await,
        (Workload::Throughput, Side::Greenpool) => pool_side::throughput(sizes.throughput).await,
        (Workload::Sleepers, Side::Baseline) => baseline::sleepers(sizes.sleepers).await,
        (Workload::Sleepers, Side::Greenpool) => pool_side::sleepers(sizes.sleepers).await,
        (Workload::Sleepers1m, Side::Baseline) => baseline::sleepers(sizes.sleepers_1m).await,
        (Workload::Sleepers1m, Side::Greenpool) => pool_side::sleepers(sizes.sleepers_1m).await,
        (Workload::AcceptLatency, Side::Baseline) => {
            baseline::accept_latency(sizes.accept_latency).await
        }
        (Workload::AcceptLatency, Side::Greenpool) => {
            pool_side::accept_latency(sizes.accept_latency).await
        }
        (Workload::Terminate, Side::Baseline) => baseline::terminate(sizes.terminate).await,
        (Workload::Terminate, Side::Greenpool) => pool_side::terminate(sizes.terminate).await,
        (Workload::Resize, Side::Baseline) => baseline::resize(sizes.resize).await,
        (Workload::Resize, Side::Greenpool) => pool_side::resize(sizes.resize).await,
        (Workload::Timer, Side::Baseline) => baseline::timer(sizes.timer).await,
        (Workload::Timer, Side::Greenpool) => pool_side::timer(sizes.timer).await,
    }
}

/// Runs one side of one workload in a fresh process of this binary.
async fn run_child(workload: Workload, side: Side, quick: bool) -> anyhow::Result<Figures> {
    let exe = std::env::current_exe().context("finding this binary to re-run it")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["bench", "--child", workload.name(), "--side", side.name()]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("running the bench child process")?;
    if !out.status.success() {
        anyhow::bail!(
            "child process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the bench child printed no figures")?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_per_figure() {
        let runs = [
            figures(&[("a", 3.0), ("b", 10.0)]),
            figures(&[("a", 1.0), ("b", 30.0)]),
            figures(&[("a", 2.0), ("b", 20.0)]),
        ];
        let m = median(&runs);
        assert_eq!(m["a"], 2.0);
        assert_eq!(m["b"], 20.0);
    }
}
