//! The bare-tokio twins: every workload done with the least code a user would
//! write instead of greenpool — a [`Semaphore`] for the limit,
//! [`tokio::spawn`] per job, callbacks as plain closures, a `HashMap` of
//! handles for kills, `add_permits`/`forget_permits` for resize and
//! [`DelayQueue`] for the timer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio_util::time::DelayQueue;

use super::memory;
use super::params;
use super::probe::{delays, percentile, Countdown, Slots, Stamps};
use super::{figures, Figures};

/// `throughput` on a bare semaphore.
pub(crate) async fn throughput(p: params::Throughput) -> anyhow::Result<Figures> {
    let sem = Arc::new(Semaphore::new(p.limit));
    let (done, last) = Countdown::new(p.jobs);
    let accepted = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..p.jobs {
        let permit = sem.clone().acquire_owned().await?;
        let on_accept = {
            let accepted = accepted.clone();
            move |_id: u64, _at: Instant| {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        };
        let on_done = {
            let (sum, done) = (sum.clone(), done.clone());
            move |value: u64| {
                sum.fetch_add(value, Ordering::Relaxed);
                done.hit();
            }
        };
        tokio::spawn(async move {
            on_accept(i, Instant::now());
            let value = async move { i }.await;
            on_done(value);
            drop(permit);
        });
    }
    let last = last.await.context("a throughput job vanished")?;
    let elapsed = last.duration_since(start).as_secs_f64();
    Ok(figures(&[
        ("jobs_per_s", p.jobs as f64 / elapsed),
        ("elapsed_s", elapsed),
        ("callbacks", p.jobs as f64),
        ("accepts", accepted.load(Ordering::Relaxed) as f64),
    ]))
}

/// `sleepers` / `sleepers_1m` on a bare semaphore; run it in a fresh process.
pub(crate) async fn sleepers(p: params::Sleepers) -> anyhow::Result<Figures> {
    let sem = Arc::new(Semaphore::new(usize::try_from(p.jobs)?));
    let (accepted, all_parked) = Countdown::new(p.jobs);
    let (done, last) = Countdown::new(p.jobs);
    let rss_before = memory::rss();
    let start = Instant::now();
    for _ in 0..p.jobs {
        let permit = sem.clone().acquire_owned().await?;
        let on_accept = {
            let accepted = accepted.clone();
            move || accepted.hit()
        };
        let on_done = {
            let done = done.clone();
            move || done.hit()
        };
        let sleep = p.sleep;
        tokio::spawn(async move {
            on_accept();
            tokio::time::sleep(sleep).await;
            on_done();
            drop(permit);
        });
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
    }
    Ok(out)
}

/// `accept_latency` on a bare semaphore.
pub(crate) async fn accept_latency(p: params::AcceptLatency) -> anyhow::Result<Figures> {
    let sem = Arc::new(Semaphore::new(p.limit));
    let base = Instant::now();
    let called = Stamps::new(base, p.jobs);
    let accepted = Stamps::new(base, p.jobs);
    let (done, last) = Countdown::new(p.jobs);
    for i in 0..p.jobs {
        called.set(i, Instant::now());
        let permit = sem.clone().acquire_owned().await?;
        let on_accept = {
            let accepted = accepted.clone();
            move |id: u64, at: Instant| accepted.set(id, at)
        };
        let on_done = {
            let done = done.clone();
            move || done.hit()
        };
        let sleep = p.sleep;
        tokio::spawn(async move {
            on_accept(i, Instant::now());
            tokio::time::sleep(sleep).await;
            on_done();
            drop(permit);
        });
    }
    last.await.context("an accept_latency job vanished")?;
    Ok(latency_figures(&called, &accepted, p.jobs))
}

/// p50/p99/max of accept stamp minus call stamp, in µs.
pub(crate) fn latency_figures(called: &Stamps, accepted: &Stamps, jobs: u64) -> Figures {
    let mut lat: Vec<f64> = (0..jobs)
        .map(|i| accepted.get(i).saturating_sub(called.get(i)) as f64 / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    figures(&[
        ("accept_p50_us", percentile(&lat, 50.0)),
        ("accept_p99_us", percentile(&lat, 99.0)),
        ("accept_max_us", lat.last().copied().unwrap_or(0.0)),
    ])
}

/// Fires the job's result callback when the job ends, however it ends, so a
/// killed job still gets exactly one callback (as the pool promises).
struct OnExit<F: FnMut(bool)> {
    callback: F,
    completed: bool,
}

impl<F: FnMut(bool)> Drop for OnExit<F> {
    fn drop(&mut self) {
        (self.callback)(self.completed);
    }
}

/// `terminate` on a bare semaphore: kill = take the handle out of the map,
/// abort it, and join it.
pub(crate) async fn terminate(p: params::Terminate) -> anyhow::Result<Figures> {
    let sem = Arc::new(Semaphore::new(usize::try_from(p.jobs)?));
    let ids = Slots::new(p.jobs);
    let (accepted, all_parked) = Countdown::new(p.jobs);
    let (done, _last) = Countdown::new(p.jobs);
    let mut handles = HashMap::with_capacity(usize::try_from(p.jobs)?);
    for i in 0..p.jobs {
        let permit = sem.clone().acquire_owned().await?;
        let on_accept = {
            let (ids, accepted) = (ids.clone(), accepted.clone());
            move |i: u64, id: u64| {
                ids.put(i, id);
                accepted.hit();
            }
        };
        let on_done = {
            let done = done.clone();
            move |_completed: bool| done.hit()
        };
        let sleep = p.sleep;
        let handle = tokio::spawn(async move {
            let mut guard = OnExit {
                callback: on_done,
                completed: false,
            };
            on_accept(i, i);
            tokio::time::sleep(sleep).await;
            guard.completed = true;
            drop(permit);
        });
        handles.insert(i, handle);
    }
    all_parked.await.context("a parked job vanished")?;
    let mut lat = Vec::with_capacity(handles.len());
    let start = Instant::now();
    for i in 0..p.jobs {
        let t = Instant::now();
        if let Some(handle) = handles.remove(&ids.get(i)) {
            handle.abort();
            let _ = handle.await;
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(figures(&[
        ("kills_per_s", p.jobs as f64 / total),
        ("kill_p50_us", percentile(&lat, 50.0)),
        ("kill_p99_us", percentile(&lat, 99.0)),
        ("jobs_with_callback", (p.jobs as usize - done.left()) as f64),
    ]))
}

/// `resize` on a bare semaphore: grow = `add_permits(1)`, shrink =
/// `forget_permits(1)` (which forgets nothing when no permit is free, so the
/// limit drifts: see `final_limit`).
pub(crate) async fn resize(p: params::Resize) -> anyhow::Result<Figures> {
    let sem = Arc::new(Semaphore::new(p.limit));
    let (done, last) = Countdown::new(p.jobs);
    let feeder = {
        let sem = sem.clone();
        tokio::spawn(async move {
            for _ in 0..p.jobs {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    return;
                };
                let on_done = {
                    let done = done.clone();
                    move || done.hit()
                };
                tokio::spawn(async move {
                    tokio::time::sleep(p.sleep).await;
                    on_done();
                    drop(permit);
                });
            }
        })
    };
    tokio::task::yield_now().await;
    let mut in_ops = Duration::ZERO;
    let mut made = 0;
    while made < p.ops {
        let t = Instant::now();
        for _ in 0..p.batch / 2 {
            sem.add_permits(1);
            sem.forget_permits(1);
        }
        in_ops += t.elapsed();
        made += p.batch / 2 * 2;
        tokio::task::yield_now().await;
    }
    feeder.await?;
    last.await.context("a resize job vanished")?;
    Ok(figures(&[
        ("resize_ops_per_s", made as f64 / in_ops.as_secs_f64()),
        ("final_limit", sem.available_permits() as f64),
    ]))
}

/// `timer` on a [`DelayQueue`]; run it in a fresh process.
pub(crate) async fn timer(p: params::Timer) -> anyhow::Result<Figures> {
    let delays = delays(p.entries, p.lo, p.hi);
    let mut queue: DelayQueue<u64> = DelayQueue::new();
    // Touch the key slots first: the figure is the queue's own memory.
    let mut keys = vec![None; delays.len()];
    let rss_before = memory::rss();
    let start = Instant::now();
    for (i, (slot, secs)) in keys.iter_mut().zip(&delays).enumerate() {
        *slot = Some(queue.insert(i as u64, Duration::from_secs_f64(*secs)));
    }
    let scheduled = start.elapsed().as_secs_f64();
    let rss_pending = memory::rss();
    let start = Instant::now();
    for key in keys.iter().flatten() {
        queue.remove(key);
    }
    let cancelled = start.elapsed().as_secs_f64();
    Ok(timer_figures(
        p.entries,
        scheduled,
        cancelled,
        memory::per_item(rss_before, rss_pending, p.entries),
    ))
}

/// The `timer` figures from the two phase durations.
pub(crate) fn timer_figures(entries: u64, scheduled: f64, cancelled: f64, bytes: f64) -> Figures {
    let n = entries as f64;
    figures(&[
        ("schedule_ops_per_s", n / scheduled),
        ("cancel_ops_per_s", n / cancelled),
        ("schedule_cancel_pairs_per_s", n / (scheduled + cancelled)),
        ("bytes_per_entry", bytes),
        (
            "peak_rss_mib",
            memory::peak_rss().unwrap_or(0) as f64 / 1048576.0,
        ),
    ])
}
