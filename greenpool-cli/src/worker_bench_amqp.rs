//! `greenpool bench worker --broker amqp://...`: `greenpool worker` against
//! `celery worker -P eventlet` on the same RabbitMQ, results through the
//! rpc:// backend (replies to the bench's own queue), in one run.
//!
//! Each side gets the same number of `greenpool.add` messages, published
//! (each confirmed) before the worker starts; the figure is the span from
//! the first to the last `date_done` in the replies, so start-up and the
//! bench's own publishing are left out. Publisher-confirm round trips per
//! task are the worker's own (its rpc replies are confirmed in rounds);
//! the Python worker publishes without confirms.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use greenpool_celery::{AsyncResult, Client, SendOptions, Timestamp, Worker, WorkerConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map};

use crate::worker_bench::{
    baseline_python, print_table, print_verdict, start_python_worker, stop_python_worker, Columns,
    Run,
};

fn bar(n: usize, label: &str) -> ProgressBar {
    ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(&format!("  {label} {{bar:40}} {{pos}}/{{len}} {{per_sec}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Publishes `n` adds through `client`; returns their results.
async fn enqueue(client: &Client, n: usize) -> anyhow::Result<Vec<AsyncResult>> {
    let b = bar(n, "enqueue        ");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(
            client
                .send_task(
                    "greenpool.add",
                    vec![json!(i), json!(1)],
                    Map::new(),
                    SendOptions::default(),
                )
                .await?,
        );
        b.inc(1);
    }
    b.finish_and_clear();
    Ok(out)
}

/// Waits for every reply; returns the `date_done` span.
async fn wait_all(results: &[AsyncResult], label: &str) -> anyhow::Result<Duration> {
    let b = bar(results.len(), label);
    let mut first = f64::INFINITY;
    let mut last = f64::NEG_INFINITY;
    for r in results {
        r.get(Duration::from_secs(600)).await?;
        let meta = r.meta().await?.context("a reply has no meta")?;
        let done: Timestamp = meta.date_done.context("a reply has no date_done")?;
        first = first.min(done.unix_seconds());
        last = last.max(done.unix_seconds());
        b.inc(1);
    }
    b.finish_and_clear();
    anyhow::ensure!(first.is_finite(), "no results");
    Ok(Duration::from_secs_f64((last - first).max(1e-6)))
}

async fn bench_greenpool(url: &str, tasks: usize, concurrency: usize) -> anyhow::Result<Run> {
    let client = Client::connect(url, Some("rpc://")).await?;
    let results = enqueue(&client, tasks).await?;
    let config = WorkerConfig::new(url)
        .result_backend(Some("rpc://".to_owned()))
        .concurrency(concurrency)
        .hostname("bench@greenpool");
    let worker = Worker::new(config, crate::builtin_tasks::registry())?;
    let stop = worker.shutdown_handle();
    let stats = worker.stats();
    let task = tokio::spawn(worker.run());
    let elapsed = wait_all(&results, "greenpool      ").await?;
    stop.warm();
    task.await??;
    Ok(Run {
        name: "greenpool worker",
        tasks,
        elapsed,
        commands: stats.published(),
        round_trips: Some(stats.confirm_round_trips()),
        top: Vec::new(),
    })
}

async fn bench_python(
    python: &Path,
    url: &str,
    tasks: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let client = Client::connect(url, Some("rpc://")).await?;
    let results = enqueue(&client, tasks).await?;
    let child = start_python_worker(python, concurrency, url, "rpc://")?;
    let outcome = wait_all(&results, "celery eventlet").await;
    stop_python_worker(child);
    Ok(Run {
        name: "celery -P eventlet",
        tasks,
        elapsed: outcome?,
        commands: tasks as u64,
        round_trips: None,
        top: Vec::new(),
    })
}

/// Runs both sides on the RabbitMQ at `url` and prints the table.
pub(crate) async fn run(
    url: &str,
    tasks: usize,
    concurrency: usize,
    python: &Option<String>,
) -> anyhow::Result<()> {
    println!(
        "worker bench on AMQP: {tasks} greenpool.add messages published before each worker \
         starts, -c {concurrency}, results through rpc://"
    );
    let mut runs = vec![bench_greenpool(url, tasks, concurrency).await?];
    if let Some(py) = baseline_python(python) {
        runs.push(bench_python(&py, url, tasks, concurrency).await?);
    }
    print_table(
        &runs,
        &Columns {
            rate: "messages/s",
            per_task: "replies/t",
            trips: "confirm trips/t",
            no_trips: "n/a (no confirms)",
        },
    );
    print_verdict(&runs);
    Ok(())
}
