//! The prefetch window: how many messages the worker may hold unacked
//! (concurrency × multiplier). `pool_grow`/`pool_shrink` move it by
//! n × multiplier, as Celery's `_update_prefetch_count` does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

/// The window: a semaphore the consumer takes one permit from per
/// message (Redis), the current size for `stats`, and a watch of the
/// count a broker that enforces the window itself should use (AMQP's
/// `basic.qos`): the size plus one per request waiting for its ETA, as
/// Celery raises its QoS while an ETA request waits (on Redis such a
/// request gives its permit back instead).
#[derive(Debug)]
pub(crate) struct Prefetch {
    permits: Arc<Semaphore>,
    size: AtomicUsize,
    eta_held: AtomicUsize,
    changes: watch::Sender<usize>,
}

impl Prefetch {
    /// A window of `size` messages.
    pub(crate) fn new(size: usize) -> Self {
        Prefetch {
            permits: Arc::new(Semaphore::new(size.min(Semaphore::MAX_PERMITS))),
            size: AtomicUsize::new(size),
            eta_held: AtomicUsize::new(0),
            changes: watch::channel(size).0,
        }
    }

    /// Sends the broker's count: the size plus the requests held for
    /// their ETA.
    fn announce(&self) {
        let count = self
            .size()
            .saturating_add(self.eta_held.load(Ordering::Relaxed));
        self.changes.send_if_modified(|c| {
            let changed = *c != count;
            *c = count;
            changed
        });
    }

    /// Sets how many requests wait for their ETA now.
    pub(crate) fn set_eta_held(&self, n: usize) {
        self.eta_held.store(n, Ordering::Relaxed);
        self.announce();
    }

    /// A receiver that sees every new broker count (size plus ETA-held).
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub(crate) fn watch(&self) -> watch::Receiver<usize> {
        self.changes.subscribe()
    }

    /// The semaphore the consumer takes permits from.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn semaphore(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    /// The current size (`stats.prefetch_count`).
    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Widens the window by `n` at once.
    pub(crate) fn grow(&self, n: usize) {
        let n = n.min(Semaphore::MAX_PERMITS - self.permits.available_permits());
        self.permits.add_permits(n);
        self.size.fetch_add(n, Ordering::Relaxed);
        self.announce();
    }

    /// Narrows the window by `n`, never below one: free permits are taken
    /// at once, the rest as held messages are acked.
    pub(crate) fn shrink(&self, n: usize) {
        let cur = self.size();
        let n = n.min(cur.saturating_sub(1));
        if n == 0 {
            return;
        }
        self.size.fetch_sub(n, Ordering::Relaxed);
        self.announce();
        let taken = self.permits.forget_permits(n);
        let rest = n - taken;
        if rest > 0 {
            let permits = Arc::clone(&self.permits);
            let rest = u32::try_from(rest).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(rest).await {
                    p.forget();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_grow_and_shrink() {
        let p = Prefetch::new(40);
        let mut seen = p.watch();
        p.grow(8);
        assert!(seen.has_changed().unwrap());
        assert_eq!(*seen.borrow_and_update(), 48);
        assert_eq!(p.size(), 48);
        assert_eq!(p.semaphore().available_permits(), 48);
        p.shrink(4);
        assert_eq!(p.size(), 44);
        assert_eq!(*seen.borrow_and_update(), 44);
        p.set_eta_held(3);
        assert_eq!((p.size(), *seen.borrow_and_update()), (44, 47));
        p.set_eta_held(0);
        assert_eq!(*seen.borrow_and_update(), 44);
        assert_eq!(p.semaphore().available_permits(), 44);
        p.shrink(100);
        assert_eq!(p.size(), 1);
    }
}
