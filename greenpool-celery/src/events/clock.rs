//! The Lamport clock every event and control reply carries.

use std::sync::atomic::{AtomicU64, Ordering};

/// A logical clock in Lamport's sense, as Celery keeps one per app: each
/// event sent moves it forward, each message received with a `clock`
/// header moves it past that value.
///
/// Relaxed atomics suffice: the value orders messages between nodes, not
/// memory accesses within this one.
#[derive(Debug, Default)]
pub(crate) struct LamportClock {
    value: AtomicU64,
}

impl LamportClock {
    /// Ticks and returns the new value.
    pub(crate) fn forward(&self) -> u64 {
        self.value.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Moves past `other` (a value another node sent) and returns the new
    /// value: `max(own, other) + 1`.
    pub(crate) fn adjust(&self, other: u64) -> u64 {
        let prev = self.value.fetch_max(other, Ordering::Relaxed);
        let _ = prev;
        self.forward()
    }

    /// The current value, without ticking.
    pub(crate) fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_adjust() {
        let c = LamportClock::default();
        assert_eq!(c.forward(), 1);
        assert_eq!(c.adjust(10), 11);
        assert_eq!(c.adjust(3), 12);
        assert_eq!(c.value(), 12);
    }
}
