//! The workloads on greenpool: the same jobs, callbacks and measurements as
//! the twins in `baseline.rs`, through [`TaskPool`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use greenpool::{ApplyError, Job, JobId, KillSignal, Outcome, TaskPool};

use super::baseline::{latency_figures, timer_figures};
use super::memory;
use super::params;
use super::probe::{delays, percentile, Countdown, Stamps};
use super::{figures, Figures};

/// A started pool of `limit` slots.
fn started(limit: usize) -> anyhow::Result<TaskPool> {
    let pool = TaskPool::builder()
        .limit(i64::try_from(limit)?)
        .build()
        .context("building the pool")?;
    pool.start().context("starting the pool")?;
    Ok(pool)
}

/// A rejected apply as an error (the job inside is not `Sync`).
fn rejected<J>(e: ApplyError<J>) -> anyhow::Error {
    anyhow::anyhow!("apply_async failed: {e}")
}

/// Set to apply each `throughput` job as a type-erased `Job<T>` instead of
/// straight from its `JobBuilder`: measures what the erasure costs.
const BOXED_ENV: &str = "GREENPOOL_BENCH_BOXED_JOBS";

/// `throughput` on greenpool.
pub(crate) async fn throughput(p: params::Throughput) -> anyhow::Result<Figures> {
    let pool = started(p.limit)?;
    let boxed = std::env::var_os(BOXED_ENV).is_some();
    let (done, last) = Countdown::new(p.jobs);
    let accepted = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..p.jobs {
        let on_accept = {
            let accepted = accepted.clone();
            move |_id: JobId, _at: tokio::time::Instant| {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        };
        let on_done = {
            let (sum, done) = (sum.clone(), done.clone());
            move |outcome: &Outcome<u64>| {
                if let Some(value) = outcome.completed_ref() {
                    sum.fetch_add(*value, Ordering::Relaxed);
                }
                done.hit();
            }
        };
        let job = Job::new(move |_ctx| async move { i })
            .callback(on_done)
            .accept_callback(on_accept);
        let handle = if boxed {
            pool.apply_async(job.boxed()).await
        } else {
            pool.apply_async(job).await
        };
        drop(handle.map_err(rejected)?);
    }
    let last = last.await.context("a throughput job vanished")?;
    let elapsed = last.duration_since(start).as_secs_f64();
    pool.stop().await?;
    Ok(figures(&[
        ("jobs_per_s", p.jobs as f64 / elapsed),
        ("elapsed_s", elapsed),
        ("callbacks", p.jobs as f64),
        ("accepts", accepted.load(Ordering::Relaxed) as f64),
    ]))
}

/// `sleepers` / `sleepers_1m` on greenpool; run it in a fresh process.
pub(crate) async fn sleepers(p: params::Sleepers) -> anyhow::Result<Figures> {
    let pool = started(usize::try_from(p.jobs)?)?;
    let (accepted, all_parked) = Countdown::new(p.jobs);
    let (done, last) = Countdown::new(p.jobs);
    let rss_before = memory::rss();
    let start = Instant::now();
    for _ in 0..p.jobs {
        let on_accept = {
            let accepted = accepted.clone();
            move |_id: JobId, _at: tokio::time::Instant| accepted.hit()
        };
        let on_done = {
            let done = done.clone();
            move |_outcome: &Outcome<()>| done.hit()
        };
        let sleep = p.sleep;
        let job = Job::new(move |_ctx| tokio::time::sleep(sleep))
            .callback(on_done)
            .accept_callback(on_accept);
        drop(pool.apply_async(job).await.map_err(rejected)?);
    }
    let parked_at = all_parked.await.context("a sleeper vanished")?;
    let rss_parked = memory::rss();
    let mut out = figures(&[
        (
            "bytes_per_parked_job",
            memory::per_item(rss_before, rss_parked, p.jobs),
        ),
        (
            "all_parked_after_s",
            parked_at.duration_since(start).as_secs_f64(),
        ),
        (
            "peak_rss_mib",
            memory::peak_rss().unwrap_or(0) as f64 / 1048576.0,
        ),
    ]);
    if p.wait_all {
        let last = last.await.context("a sleeper vanished")?;
        out.insert("wall_s".into(), last.duration_since(start).as_secs_f64());
        out.insert("callbacks".into(), p.jobs as f64);
        pool.stop().await?;
    }
    Ok(out)
}

/// `accept_latency` on greenpool.
pub(crate) async fn accept_latency(p: params::AcceptLatency) -> anyhow::Result<Figures> {
    let pool = started(p.limit)?;
    let base = Instant::now();
    let called = Stamps::new(base, p.jobs);
    let accepted = Stamps::new(base, p.jobs);
    let (done, last) = Countdown::new(p.jobs);
    for i in 0..p.jobs {
        called.set(i, Instant::now());
        let on_accept = {
            let accepted = accepted.clone();
            move |_id: JobId, at: tokio::time::Instant| accepted.set(i, at.into_std())
        };
        let on_done = {
            let done = done.clone();
            move |_outcome: &Outcome<()>| done.hit()
        };
        let sleep = p.sleep;
        let job = Job::new(move |_ctx| tokio::time::sleep(sleep))
            .callback(on_done)
            .accept_callback(on_accept);
        drop(pool.apply_async(job).await.map_err(rejected)?);
    }
    last.await.context("an accept_latency job vanished")?;
    pool.stop().await?;
    Ok(latency_figures(&called, &accepted, p.jobs))
}

/// `terminate` on greenpool: `terminate_job(id, KILL)` returns once the job
/// ended and its callback ran, like the baseline's abort-and-join.
pub(crate) async fn terminate(p: params::Terminate) -> anyhow::Result<Figures> {
    let pool = started(usize::try_from(p.jobs)?)?;
    // JobId has no public constructor, so the accept callbacks store them.
    let ids = Arc::new(Mutex::new(vec![None; usize::try_from(p.jobs)?]));
    let (accepted, all_parked) = Countdown::new(p.jobs);
    let (done, _last) = Countdown::new(p.jobs);
    for i in 0..p.jobs {
        let on_accept = {
            let (ids, accepted) = (ids.clone(), accepted.clone());
            move |id: JobId, _at: tokio::time::Instant| {
                let mut ids = ids.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| ids.get_mut(i)) {
                    *slot = Some(id);
                }
                drop(ids);
                accepted.hit();
            }
        };
        let on_done = {
            let done = done.clone();
            move |_outcome: &Outcome<()>| done.hit()
        };
        let sleep = p.sleep;
        let job = Job::new(move |_ctx| tokio::time::sleep(sleep))
            .callback(on_done)
            .accept_callback(on_accept);
        drop(pool.apply_async(job).await.map_err(rejected)?);
    }
    all_parked.await.context("a parked job vanished")?;
    let ids: Vec<JobId> = std::mem::take(&mut *ids.lock().unwrap_or_else(PoisonError::into_inner))
        .into_iter()
        .flatten()
        .collect();
    let mut lat = Vec::with_capacity(ids.len());
    let start = Instant::now();
    for id in ids {
        let t = Instant::now();
        let _ = pool.terminate_job(id, Some(KillSignal::Kill)).await;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed().as_secs_f64();
    pool.stop().await?;
    lat.sort_by(f64::total_cmp);
    Ok(figures(&[
        ("kills_per_s", p.jobs as f64 / total),
        ("kill_p50_us", percentile(&lat, 50.0)),
        ("kill_p99_us", percentile(&lat, 99.0)),
        ("jobs_with_callback", (p.jobs as usize - done.left()) as f64),
    ]))
}

/// `resize` on greenpool: `grow(1)` / `shrink(1)`.
pub(crate) async fn resize(p: params::Resize) -> anyhow::Result<Figures> {
    let pool = started(p.limit)?;
    let (done, last) = Countdown::new(p.jobs);
    let feeder = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..p.jobs {
                let on_done = {
                    let done = done.clone();
                    move |_outcome: &Outcome<()>| done.hit()
                };
                let job = Job::new(move |_ctx| tokio::time::sleep(p.sleep)).callback(on_done);
                drop(pool.apply_async(job).await.map_err(rejected)?);
            }
            anyhow::Ok(())
        })
    };
    tokio::task::yield_now().await;
    let mut in_ops = Duration::ZERO;
    let mut made = 0;
    while made < p.ops {
        let t = Instant::now();
        for _ in 0..p.batch / 2 {
            pool.grow(1)?;
            pool.shrink(1)?;
        }
        in_ops += t.elapsed();
        made += p.batch / 2 * 2;
        tokio::task::yield_now().await;
    }
    feeder.await??;
    last.await.context("a resize job vanished")?;
    let final_limit = pool.limit();
    pool.stop().await?;
    Ok(figures(&[
        ("resize_ops_per_s", made as f64 / in_ops.as_secs_f64()),
        ("final_limit", final_limit as f64),
    ]))
}

/// `timer` on greenpool's [`Timer`](greenpool::Timer): `call_after` each
/// entry, then `cancel` each; run it in a fresh process.
pub(crate) async fn timer(p: params::Timer) -> anyhow::Result<Figures> {
    let delays = delays(p.entries, p.lo, p.hi);
    let timer = TaskPool::new_timer();
    // Touch the reference slots first: the figure is the timer's own memory.
    let mut refs: Vec<Option<greenpool::TimerRef>> = Vec::new();
    refs.resize_with(delays.len(), || None);
    let rss_before = memory::rss();
    let start = Instant::now();
    for (slot, secs) in refs.iter_mut().zip(&delays) {
        *slot = Some(timer.call_after(Duration::from_secs_f64(*secs), || {}, 0)?);
    }
    let scheduled = start.elapsed().as_secs_f64();
    let rss_pending = memory::rss();
    let start = Instant::now();
    for tref in refs.iter().flatten() {
        let _ = timer.cancel(tref);
    }
    let cancelled = start.elapsed().as_secs_f64();
    anyhow::ensure!(timer.is_empty(), "entries left after cancelling all");
    Ok(timer_figures(
        p.entries,
        scheduled,
        cancelled,
        memory::per_item(rss_before, rss_pending, p.entries),
    ))
}
