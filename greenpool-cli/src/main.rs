//! `greenpool`: benchmarks of the pool against bare tokio and Celery's
//! eventlet pool, and (later) the Celery worker.

mod bench;

use clap::{Parser, Subcommand};

/// The greenpool command.
#[derive(Debug, Parser)]
#[command(name = "greenpool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the standard workloads on greenpool and on bare tokio (and with
    /// --python on Celery's eventlet pool) and print the ratios.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::run(args).await,
    }
}
