//! Timer bench: schedule 1,000,000 entries with random delays, then cancel
//! them all, with greenpool's `Timer` and with `tokio_util::time::DelayQueue`
//! (insert, then remove) in one criterion group, so that their ratio comes
//! from one run.
//!
//! Before the timings it reports memory per pending entry for both: each
//! contender fills up in a fresh child process (this binary again, with
//! `GREENPOOL_TIMER_BENCH_MEM` set), which reports its resident-set growth
//! (`VmRSS` in `/proc/self/status`, so Linux only) divided by the number of
//! pending entries. A counting global allocator would be more precise, but
//! it needs `unsafe impl GlobalAlloc`, and the workspace forbids unsafe code.
//!
//! Run: `cargo bench -p greenpool --bench timer -- --warm-up-time 1 --measurement-time 5 --sample-size 10`

// A bench aborts on any failure; there is no caller to hand errors to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use greenpool::Timer;
use tokio::runtime::Runtime;
use tokio_util::time::DelayQueue;

/// Entries per round.
const N: usize = 1_000_000;

/// Entries per round when `cargo test` runs the bench once as a smoke test
/// (no `--bench` flag): a million would take minutes in a debug build.
const N_SMOKE: usize = 10_000;

/// How many entries a timed round uses.
fn round_size() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        N
    } else {
        N_SMOKE
    }
}

/// Set in the child processes that measure memory; names the contender.
const MEM_ENV: &str = "GREENPOOL_TIMER_BENCH_MEM";

/// `n` random delays from 1 ms to 1 h (xorshift, fixed seed).
fn delays(n: usize) -> Vec<Duration> {
    let mut state: u64 = 0x853c_49e6_748f_ea9b;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Duration::from_millis(1 + state % 3_600_000)
        })
        .collect()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Schedules every delay on a fresh timer, then cancels every entry.
fn greenpool_round(delays: &[Duration]) {
    let timer = Timer::new();
    let trefs: Vec<_> = delays
        .iter()
        .map(|d| timer.call_after(*d, || {}, 0).unwrap())
        .collect();
    for tref in &trefs {
        black_box(timer.cancel(tref));
    }
    assert!(timer.is_empty());
}

/// Inserts every delay into a fresh `DelayQueue`, then removes every key.
fn delay_queue_round(delays: &[Duration]) {
    let mut queue = DelayQueue::new();
    let keys: Vec<_> = delays.iter().map(|d| queue.insert((), *d)).collect();
    for key in &keys {
        black_box(queue.remove(key));
    }
    assert!(queue.is_empty());
}

fn schedule_then_cancel(c: &mut Criterion) {
    let rt = runtime();
    let n = round_size();
    let delays = delays(n);
    let mut group = c.benchmark_group("timer_schedule_then_cancel_1M");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function("greenpool_timer", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _guard = rt.enter();
                let start = Instant::now();
                greenpool_round(&delays);
                total += start.elapsed();
            }
            // Let the stopped timers' driver tasks see the stop and end.
            rt.block_on(tokio::task::yield_now());
            total
        });
    });
    group.bench_function("tokio_util_delay_queue", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _guard = rt.enter();
                let start = Instant::now();
                delay_queue_round(&delays);
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

/// What `criterion_group!` would generate, minus its undocumented `pub fn`.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    schedule_then_cancel(&mut c);
}

/// Resident set size of this process in bytes, if the OS tells.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// In a child: fills one contender with `N` pending entries and prints its
/// resident-set growth per entry. The delays are made before measuring.
fn measure_child(which: &str) {
    let rt = runtime();
    let _guard = rt.enter();
    let delays = delays(N);
    let before = rss_bytes().expect("VmRSS is readable");
    let per_entry = |after: u64| (after.saturating_sub(before)) as f64 / N as f64;
    match which {
        "greenpool" => {
            let timer = Timer::new();
            for d in &delays {
                // The ref is dropped: only what the timer holds is measured.
                let _ = timer.call_after(*d, || {}, 0).unwrap();
            }
            assert_eq!(timer.len(), N);
            println!("{}", per_entry(rss_bytes().expect("VmRSS is readable")));
            black_box(&timer);
        }
        "delay_queue" => {
            let mut queue = DelayQueue::new();
            for d in &delays {
                let _ = queue.insert((), *d);
            }
            assert_eq!(queue.len(), N);
            println!("{}", per_entry(rss_bytes().expect("VmRSS is readable")));
            black_box(&queue);
        }
        other => panic!("unknown contender {other}"),
    }
}

/// Runs the memory measurement of `which` in a fresh child process.
fn measure_in_child(which: &str) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).env(MEM_ENV, which).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn report_memory() {
    if rss_bytes().is_none() {
        println!("memory per pending entry: not measured (no /proc/self/status here)");
        return;
    }
    let greenpool = measure_in_child("greenpool");
    let delay_queue = measure_in_child("delay_queue");
    match (greenpool, delay_queue) {
        (Some(g), Some(d)) => println!(
            "memory per pending entry (RSS growth at {N} entries): greenpool {g:.1} B, \
             DelayQueue {d:.1} B, ratio greenpool/DelayQueue {:.2}",
            g / d
        ),
        _ => println!("memory per pending entry: a measuring child failed"),
    }
}

fn main() {
    if let Ok(which) = std::env::var(MEM_ENV) {
        measure_child(&which);
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` (one quick pass
    // per bench) does not, and skips the million-entry memory children.
    if std::env::args().any(|a| a == "--bench") {
        report_memory();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
