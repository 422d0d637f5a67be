//! `greenpool`: the command-line face of the greenpool crates.
//!
//! Subcommands: `worker` runs a Celery worker on Redis, `call` sends a
//! task by name, `bench-worker` times the worker against Python Celery.

use clap::{Parser, Subcommand};

mod builtin_tasks;
mod call;
mod celery_log;
mod worker;
mod worker_bench;

/// greenpool: Celery's eventlet TaskPool on tokio.
#[derive(Debug, Parser)]
#[command(name = "greenpool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Celery worker on Redis serving greenpool.add/echo/sleep/fail.
    Worker(worker::WorkerArgs),
    /// Send a task by name, like `celery call`.
    Call(call::CallArgs),
    /// Time `greenpool worker` draining 20,000 tasks against Python
    /// Celery's eventlet worker.
    BenchWorker(worker_bench::WorkerBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Worker(args) => celery_log::init(&args.loglevel),
        _ => celery_log::init("warning"),
    }
    match cli.command {
        Command::Worker(args) => worker::run(args),
        Command::Call(args) => call::run(args),
        Command::BenchWorker(args) => worker_bench::main(args),
    }
}
