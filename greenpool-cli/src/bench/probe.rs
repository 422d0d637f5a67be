//! Measurement plumbing shared by both sides: a countdown that stamps the
//! moment its last hit lands, and per-job timestamps written from callbacks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

/// Counts callbacks down to zero; the last one sends its [`Instant`].
#[derive(Debug, Clone)]
pub(crate) struct Countdown {
    /// Hits still expected.
    left: Arc<AtomicUsize>,
    /// Taken by the hit that brings `left` to zero.
    done: Arc<Mutex<Option<oneshot::Sender<Instant>>>>,
}

impl Countdown {
    /// A countdown of `n` hits and the receiver of the last hit's time.
    pub(crate) fn new(n: u64) -> (Countdown, oneshot::Receiver<Instant>) {
        let (tx, rx) = oneshot::channel();
        let left = usize::try_from(n).unwrap_or(usize::MAX);
        let countdown = Countdown {
            left: Arc::new(AtomicUsize::new(left)),
            done: Arc::new(Mutex::new(Some(tx))),
        };
        (countdown, rx)
    }

    /// One hit; the last one stamps the time.
    pub(crate) fn hit(&self) {
        // AcqRel: the last hit must see every earlier hit's writes (stamps).
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = Instant::now();
            let tx = self
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(tx) = tx {
                let _ = tx.send(now);
            }
        }
    }

    /// Hits still expected.
    pub(crate) fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}

/// One `u64` per job, written from callbacks on any thread.
#[derive(Debug, Clone)]
pub(crate) struct Slots(Arc<[AtomicU64]>);

impl Slots {
    /// `n` slots holding 0.
    pub(crate) fn new(n: u64) -> Slots {
        Slots((0..n).map(|_| AtomicU64::new(0)).collect())
    }

    /// Stores `value` in slot `i` (ignored when out of range).
    pub(crate) fn put(&self, i: u64, value: u64) {
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.0.get(i)) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// The value in slot `i` (0 when out of range).
    pub(crate) fn get(&self, i: u64) -> u64 {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.0.get(i))
            .map_or(0, |slot| slot.load(Ordering::Relaxed))
    }
}

/// Per-job nanosecond stamps relative to one base instant.
#[derive(Debug, Clone)]
pub(crate) struct Stamps {
    base: Instant,
    slots: Slots,
}

impl Stamps {
    /// `n` empty stamps measured from `base`.
    pub(crate) fn new(base: Instant, n: u64) -> Stamps {
        Stamps {
            base,
            slots: Slots::new(n),
        }
    }

    /// Records `at` for job `i` (ignored when out of range).
    pub(crate) fn set(&self, i: u64, at: Instant) {
        let nanos =
            u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.slots.put(i, nanos);
    }

    /// The stamp of job `i` in nanoseconds since the base.
    pub(crate) fn get(&self, i: u64) -> u64 {
        self.slots.get(i)
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// `n` delays in seconds, uniform in `lo..hi`, from a fixed seed, so that
/// both sides schedule the very same entries.
pub(crate) fn delays(n: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            // xorshift64*: plenty for spreading deadlines.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            lo + (hi - lo) * (x as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 1.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn delays_are_in_range_and_repeatable() {
        let a = delays(10_000, 1.0, 1000.0);
        assert!(a.iter().all(|d| (1.0..1000.0).contains(d)));
        assert_eq!(a, delays(10_000, 1.0, 1000.0));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!(
            (400.0..600.0).contains(&mean),
            "spread over the range: {mean}"
        );
    }

    #[test]
    fn countdown_stamps_only_the_last_hit() {
        let (c, mut rx) = Countdown::new(3);
        c.hit();
        c.hit();
        assert!(rx.try_recv().is_err());
        c.hit();
        assert!(rx.try_recv().is_ok());
        assert_eq!(c.left(), 0);
    }
}
