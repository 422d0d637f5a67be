//! Micro-benchmarks of the pool's hot operations, each next to its bare-tokio
//! twin in the same criterion group, so that the ratio comes from one run.
//!
//! ```sh
//! cargo bench -p greenpool --bench micro
//! ```
//!
//! Groups: `apply_to_callback` (apply a trivial job and wait for its result
//! callback), `try_apply_full` (a non-waiting apply on a full pool),
//! `grow_shrink` (one grow(1) + shrink(1) pair), `terminate_parked` (kill a
//! parked job and wait for it to end) and `info` (a stats snapshot).

// A bench setup that fails has nothing to measure: stop loudly.
#![allow(clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use greenpool::{Job, KillSignal, TaskPool};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, Semaphore};

/// A runtime like `#[tokio::main]`'s: one worker per core.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A started pool of `limit` slots on `rt`.
fn pool(rt: &Runtime, limit: i64) -> TaskPool {
    let pool = TaskPool::builder().limit(limit).build().expect("a pool");
    rt.block_on(async { pool.start().expect("start") });
    pool
}

fn apply_to_callback(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("apply_to_callback");
    let gp = pool(&rt, 1000);
    g.bench_function("greenpool", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, rx) = oneshot::channel();
            let job = Job::new(|_ctx| async { black_box(1u64) }).callback(move |outcome| {
                let _ = tx.send(outcome.is_completed());
            });
            drop(
                gp.apply_async(job)
                    .await
                    .map_err(|e| e.to_string())
                    .expect("apply"),
            );
            rx.await.expect("callback")
        });
    });
    let sem = Arc::new(Semaphore::new(1000));
    g.bench_function("tokio", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, rx) = oneshot::channel();
            let callback = move |v: u64| {
                let _ = tx.send(v == 1);
            };
            let permit = sem.clone().acquire_owned().await.expect("permit");
            tokio::spawn(async move {
                callback(async { black_box(1u64) }.await);
                drop(permit);
            });
            rx.await.expect("callback")
        });
    });
    g.finish();
}

fn try_apply_full(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("try_apply_full");
    let gp = pool(&rt, 1);
    let parked = rt
        .block_on(gp.apply_async(Job::new(|ctx| async move { ctx.cancelled().await })))
        .map_err(|e| e.to_string())
        .expect("apply");
    g.bench_function("greenpool", |b| {
        b.iter(|| {
            let r = gp.try_apply_async(Job::new(|_ctx| async { 1u64 }));
            black_box(r.is_err())
        });
    });
    let sem = Arc::new(Semaphore::new(1));
    let _held = sem.clone().try_acquire_owned().expect("permit");
    g.bench_function("tokio", |b| {
        b.iter(|| black_box(sem.clone().try_acquire_owned().is_err()));
    });
    g.finish();
    rt.block_on(async {
        let _ = gp.terminate_job(parked.id(), Some(KillSignal::Kill)).await;
    });
}

fn grow_shrink(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("grow_shrink");
    let gp = pool(&rt, 100);
    g.bench_function("greenpool", |b| {
        b.iter(|| {
            black_box(gp.grow(1).expect("grow"));
            black_box(gp.shrink(1).expect("shrink"));
        });
    });
    let sem = Semaphore::new(100);
    g.bench_function("tokio", |b| {
        b.iter(|| {
            sem.add_permits(1);
            black_box(sem.forget_permits(1));
        });
    });
    g.finish();
}

/// Times `n` kills of parked jobs (setup not timed).
fn terminate_parked(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("terminate_parked");
    let gp = pool(&rt, 1_000_000);
    g.bench_function("greenpool", |b| {
        b.to_async(&rt).iter_custom(|n| {
            let gp = gp.clone();
            async move {
                let mut ids = Vec::new();
                for _ in 0..n {
                    let job = Job::new(|_ctx| tokio::time::sleep(Duration::from_secs(3600)));
                    let handle = gp
                        .apply_async(job)
                        .await
                        .map_err(|e| e.to_string())
                        .expect("apply");
                    ids.push(handle.id());
                }
                tokio::task::yield_now().await;
                let start = Instant::now();
                for id in ids {
                    let _ = black_box(gp.terminate_job(id, Some(KillSignal::Kill)).await);
                }
                start.elapsed()
            }
        });
    });
    let sem = Arc::new(Semaphore::new(1_000_000));
    g.bench_function("tokio", |b| {
        b.to_async(&rt).iter_custom(|n| {
            let sem = sem.clone();
            async move {
                let mut handles = HashMap::new();
                for i in 0..n {
                    let permit = sem.clone().acquire_owned().await.expect("permit");
                    let handle = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(permit);
                    });
                    handles.insert(i, handle);
                }
                tokio::task::yield_now().await;
                let start = Instant::now();
                for i in 0..n {
                    if let Some(handle) = handles.remove(&i) {
                        handle.abort();
                        black_box(handle.await.is_err());
                    }
                }
                start.elapsed()
            }
        });
    });
    g.finish();
}

/// The bare twin of `info()`: the numbers a hand-rolled pool would keep.
struct Stats {
    limit: AtomicUsize,
    applied: AtomicU64,
    completed: AtomicU64,
}

fn info(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("info");
    let gp = pool(&rt, 100);
    g.bench_function("greenpool", |b| b.iter(|| black_box(gp.info())));
    let sem = Semaphore::new(100);
    let stats = Stats {
        limit: AtomicUsize::new(100),
        applied: AtomicU64::new(0),
        completed: AtomicU64::new(0),
    };
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let limit = stats.limit.load(Ordering::Relaxed);
            let free = sem.available_permits();
            black_box((
                limit,
                free,
                limit - free,
                stats.applied.load(Ordering::Relaxed),
                stats.completed.load(Ordering::Relaxed),
            ))
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

// The macro's generated function has no doc comment of its own.
#[allow(missing_docs)]
mod groups {
    use super::*;

    criterion_group! {
    name = micro;
    config = config();
    targets = apply_to_callback, try_apply_full, grow_shrink, terminate_parked, info
    }
}
criterion_main!(groups::micro);
