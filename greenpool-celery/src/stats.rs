//! Counters of what the worker asked of its broker and backend, for logs
//! and the bench, whatever the transport (kombu's Redis transport or
//! AMQP).

use std::sync::atomic::{AtomicU64, Ordering};

/// Round trips and operations, counted by the worker's Redis and AMQP
/// clients: [`fetched`](Self::fetched) and [`acked`](Self::acked) count on
/// either transport, [`round_trips`](Self::round_trips) and
/// [`stored`](Self::stored) the Redis connections' requests (the broker's,
/// and a Redis result backend's also behind an AMQP broker),
/// [`published`](Self::published) and
/// [`confirm_round_trips`](Self::confirm_round_trips) AMQP's publishes.
///
/// Relaxed atomics: each counter is read on its own, for reporting only.
#[derive(Debug, Default)]
pub struct BrokerStats {
    round_trips: AtomicU64,
    fetched: AtomicU64,
    acked: AtomicU64,
    stored: AtomicU64,
    published: AtomicU64,
    confirm_waits: AtomicU64,
}

impl BrokerStats {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_acked(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn add_stored(&self, n: u64) {
        self.stored.fetch_add(n, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub(crate) fn add_confirmed(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        self.confirm_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// AMQP: messages published and confirmed by the broker (follow-ups
    /// and rpc:// results).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// AMQP: publisher-confirm round trips (one per round of publishes).
    pub fn confirm_round_trips(&self) -> u64 {
        self.confirm_waits.load(Ordering::Relaxed)
    }

    /// Requests sent and answered (a pipeline or script call counts once).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
    /// Messages taken off the queues (fetched on Redis, delivered on
    /// AMQP).
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
    /// Messages acked: removed (or dropped) from the `unacked` hash on
    /// Redis, `basic.ack` sent on AMQP.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    /// Results sent to the backend.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}

/// The former name of [`BrokerStats`], from when only the Redis transport
/// counted; the counters have always counted AMQP traffic too.
#[deprecated(note = "renamed BrokerStats: the counters count AMQP traffic too")]
pub type RedisStats = BrokerStats;
