//! Runs `greenpool bench worker` on the broker its arguments name: Redis
//! (`worker_bench_redis`) or AMQP (`worker_bench_amqp`).

#[cfg(not(feature = "redis"))]
use anyhow::bail;
use anyhow::Context;

use crate::worker_bench::WorkerBenchArgs;

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
