//! Sizes of the standard workloads, shared with `bench/python/eventlet_pool.py`
//! (keep both in step: same names, same parameters).

use std::time::Duration;

/// `throughput`: trivial jobs (the job returns its argument) with both
/// callbacks set; jobs/s from the first apply to the last callback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    /// Jobs applied.
    pub(crate) jobs: u64,
    /// Pool limit.
    pub(crate) limit: usize,
}

/// `sleepers` and `sleepers_1m`: jobs that each sleep `secs`; wall time to the
/// last callback and RSS growth per parked job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sleepers {
    /// Jobs applied (and limit: all of them park at once).
    pub(crate) jobs: u64,
    /// How long each job sleeps.
    pub(crate) sleep: Duration,
    /// Wait for every callback (false: measure the parked jobs, then exit).
    pub(crate) wait_all: bool,
}

/// `accept_latency`: time from just before apply to the accept callback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptLatency {
    /// Jobs applied.
    pub(crate) jobs: u64,
    /// Pool limit.
    pub(crate) limit: usize,
    /// How long each job sleeps.
    pub(crate) sleep: Duration,
}

/// `terminate`: park `jobs` jobs, then kill each one by the id its accept
/// callback reported.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terminate {
    /// Jobs applied (and limit).
    pub(crate) jobs: u64,
    /// How long each job would sleep if not killed.
    pub(crate) sleep: Duration,
}

/// `resize`: a feeder submits `jobs` short jobs while the bench task makes
/// `ops` alternating grow(1)/shrink(1) calls, yielding every `batch` calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resize {
    /// Jobs the feeder submits.
    pub(crate) jobs: u64,
    /// Initial pool limit.
    pub(crate) limit: usize,
    /// grow + shrink calls in all.
    pub(crate) ops: u64,
    /// How long each job sleeps.
    pub(crate) sleep: Duration,
    /// Calls between two yields to the scheduler.
    pub(crate) batch: u64,
}

/// `timer`: schedule `entries` one-shot entries (delay uniform in `lo..hi`
/// seconds), then cancel every one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    /// Entries scheduled and cancelled.
    pub(crate) entries: u64,
    /// Shortest delay in seconds.
    pub(crate) lo: f64,
    /// Longest delay in seconds.
    pub(crate) hi: f64,
}

/// Every workload's sizes for one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) throughput: Throughput,
    pub(crate) sleepers: Sleepers,
    pub(crate) sleepers_1m: Sleepers,
    pub(crate) accept_latency: AcceptLatency,
    pub(crate) terminate: Terminate,
    pub(crate) resize: Resize,
    pub(crate) timer: Timer,
}

impl Sizes {
    /// The full run: the sizes the targets are stated for.
    pub(crate) const FULL: Sizes = Sizes {
        throughput: Throughput {
            jobs: 100_000,
            limit: 1000,
        },
        sleepers: Sleepers {
            jobs: 10_000,
            sleep: Duration::from_secs(1),
            wait_all: true,
        },
        sleepers_1m: Sleepers::FULL_1M,
        accept_latency: AcceptLatency {
            jobs: 20_000,
            limit: 100,
            sleep: Duration::from_millis(1),
        },
        terminate: Terminate {
            jobs: 10_000,
            sleep: Duration::from_secs(60),
        },
        resize: Resize {
            jobs: 1000,
            limit: 100,
            ops: 10_000,
            sleep: Duration::from_millis(1),
            batch: 100,
        },
        timer: Timer {
            entries: 1_000_000,
            lo: 1.0,
            hi: 1000.0,
        },
    };

    /// `--quick`: smaller sizes, the whole run well under 20 s.
    pub(crate) const QUICK: Sizes = Sizes {
        throughput: Throughput {
            jobs: 10_000,
            limit: 1000,
        },
        sleepers: Sleepers {
            jobs: 2000,
            sleep: Duration::from_secs(1),
            wait_all: true,
        },
        sleepers_1m: Sleepers::FULL_1M,
        accept_latency: AcceptLatency {
            jobs: 2000,
            limit: 100,
            sleep: Duration::from_millis(1),
        },
        terminate: Terminate {
            jobs: 2000,
            sleep: Duration::from_secs(60),
        },
        resize: Resize {
            jobs: 1000,
            limit: 100,
            ops: 10_000,
            sleep: Duration::from_millis(1),
            batch: 100,
        },
        timer: Timer {
            entries: 100_000,
            lo: 1.0,
            hi: 1000.0,
        },
    };

    /// The sizes for `--quick` or the full run.
    pub(crate) fn get(quick: bool) -> Sizes {
        if quick {
            Sizes::QUICK
        } else {
            Sizes::FULL
        }
    }
}

impl Sleepers {
    /// One million parked jobs (the full run only; `--quick` skips it).
    const FULL_1M: Sleepers = Sleepers {
        jobs: 1_000_000,
        sleep: Duration::from_secs(3600),
        wait_all: false,
    };
}
