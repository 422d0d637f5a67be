//! `greenpool`: the command-line face of the greenpool crates.
//!
//! Subcommands: `tour` walks through the pool's features on 10,000 jobs;
//! `bench` runs the standard workloads on greenpool, on bare tokio and
//! (with `--python`) on Celery's eventlet pool, and prints the ratios
//! (`bench worker` times the Celery worker against Python Celery's);
//! `worker` runs a Celery worker on Redis, `call` sends a task by name.

use clap::{Parser, Subcommand};

mod bench;
mod builtin_tasks;
mod call;
mod celery_log;
mod control;
mod inspect;
mod py_int;
mod tour;
mod transport_args;
mod worker;
mod worker_bench;
mod worker_bench_amqp;
#[cfg(feature = "redis")]
mod worker_bench_canvas;
#[cfg(feature = "redis")]
mod worker_bench_redis;
mod worker_bench_run;

/// greenpool: Celery's eventlet TaskPool on tokio.
#[derive(Debug, Parser)]
#[command(name = "greenpool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply 10,000 jobs, resize the pool while they run, kill one by id,
    /// and print info() as JSON.
    Tour(tour::TourArgs),
    /// Run the standard workloads on greenpool and on bare tokio (and with
    /// --python on Celery's eventlet pool) and print the ratios.
    Bench(bench::BenchArgs),
    /// Run a Celery worker on Redis serving greenpool.add/echo/sleep/fail.
    Worker(worker::WorkerArgs),
    /// Send a task by name, like `celery call`.
    Call(call::CallArgs),
    /// Ask workers for information, like `celery inspect`.
    Inspect(inspect::InspectArgs),
    /// Steer workers, like `celery control`.
    Control(control::ControlArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Worker(args) = &cli.command {
        // Celery's log shape at the worker's --loglevel.
        celery_log::init(&args.loglevel);
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(celery_log::stderr_is_terminal())
            .init();
    }
    match cli.command {
        Command::Tour(args) => tour::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Call(args) => call::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Control(args) => control::run(args),
    }
}
