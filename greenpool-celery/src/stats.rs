//! Counters of what the worker asked of Redis, for logs and the bench.

use std::sync::atomic::{AtomicU64, Ordering};

/// Round trips and operations, counted by the worker's Redis clients.
///
/// Relaxed atomics: each counter is read on its own, for reporting only.
#[derive(Debug, Default)]
pub struct RedisStats {
    round_trips: AtomicU64,
    fetched: AtomicU64,
    acked: AtomicU64,
    stored: AtomicU64,
}

impl RedisStats {
    pub(crate) fn round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_acked(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_stored(&self, n: u64) {
        self.stored.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests sent and answered (a pipeline or script call counts once).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
    /// Messages taken off the queues.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
    /// Messages acked (or dropped) in the unacked hash.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    /// Results sent to the backend.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}
