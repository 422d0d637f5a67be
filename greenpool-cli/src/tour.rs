//! `greenpool tour`: the pool's features on a stream of jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use greenpool::{ApplyError, Job, KillSignal, TaskPool};
use indicatif::{ProgressBar, ProgressStyle};

/// Options of `greenpool tour`.
#[derive(Debug, Args)]
pub(crate) struct TourArgs {
    /// How many jobs to apply.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// The pool's starting limit.
    #[arg(long, default_value_t = 100)]
    limit: i64,
}

/// Runs the tour on a multi-threaded runtime.
pub(crate) fn run(args: TourArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    rt.block_on(tour(args))
}

async fn tour(args: TourArgs) -> anyhow::Result<()> {
    let pool = TaskPool::builder().limit(args.limit).build()?;
    pool.start()?;
    let bar = ProgressBar::new(args.jobs);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let done = Arc::new(AtomicU64::new(0));

    // One job that parks forever, until it is killed by id.
    let parked = pool
        .apply_async(Job::new(|_ctx| std::future::pending::<u64>()).name("parked"))
        .await
        .map_err(ApplyError::without_job)?;

    let mut grown = 0usize;
    let mut shrunk = 0usize;
    for i in 0..args.jobs {
        let d = done.clone();
        let b = bar.clone();
        let job = Job::new(move |_ctx| async move {
            // Some jobs wait a little, like I/O would.
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
            i * 2
        })
        .name("double")
        .callback(move |o| {
            if o.is_completed() {
                d.fetch_add(1, Ordering::Relaxed);
            }
            b.inc(1);
        });
        // Handles are dropped: the callbacks count completions.
        drop(
            pool.apply_async(job)
                .await
                .map_err(ApplyError::without_job)?,
        );
        match i {
            i if i == args.jobs / 4 => {
                pool.grow(50)?;
                grown += 50;
                bar.set_message(format!("grew to {}", pool.limit()));
            }
            i if i == args.jobs / 2 => {
                pool.shrink(120)?;
                shrunk += 120;
                bar.set_message(format!("shrank to {} (free {})", pool.limit(), pool.free()));
            }
            _ => {}
        }
    }
    let killed = pool
        .terminate_job(parked.id(), Some(KillSignal::Kill))
        .await;
    let parked_outcome = parked.await;
    // The simple form: a future spawned in the pool, aborted through its
    // handle.
    let spawned = pool
        .spawn(std::future::pending::<u64>())
        .await
        .map_err(ApplyError::without_job)?;
    spawned.abort();
    let spawned_outcome = spawned.await;
    pool.stop().await?;
    bar.finish_with_message("done");

    let info = pool.info();
    let report = serde_json::json!({
        "jobs": args.jobs,
        "completed_callbacks": done.load(Ordering::Relaxed),
        "grown_by": grown,
        "shrunk_by": shrunk,
        "killed_job": {
            "result": format!("{killed:?}"),
            "outcome": parked_outcome.termination().map(ToString::to_string),
        },
        "aborted_job": spawned_outcome.termination().map(ToString::to_string),
        "info": info,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
