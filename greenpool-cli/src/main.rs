//! `greenpool`: the command-line face of the greenpool crates.
//!
//! Subcommands: `tour` walks through the pool's features on 10,000 jobs;
//! `bench` runs the standard workloads on greenpool, on bare tokio and
//! (with `--python`) on Celery's eventlet pool, and prints the ratios.

use clap::{Parser, Subcommand};

mod bench;
mod tour;

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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Tour(args) => tour::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
