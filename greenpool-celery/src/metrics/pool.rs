//! The pool gauges: limit, running and free slots, and the prefetch
//! window. They are read from the pool when a scrape asks, so they follow
//! `pool_grow`, `pool_shrink` and the autoscaler at once.

use std::sync::{Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What the gauges show, read from the running worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PoolSample {
    /// The pool's limit (its size).
    pub(crate) limit: i64,
    /// Jobs running.
    pub(crate) running: i64,
    /// Slots free (negative after a shrink below the running count).
    pub(crate) free: i64,
    /// Messages the worker may hold unacked.
    pub(crate) prefetch: i64,
}

type Sampler = Box<dyn Fn() -> Option<PoolSample> + Send + Sync>;

/// The gauges and where their values come from.
pub(crate) struct PoolGauges {
    limit: Gauge,
    running: Gauge,
    free: Gauge,
    prefetch: Gauge,
    sampler: Mutex<Option<Sampler>>,
}

impl std::fmt::Debug for PoolGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolGauges")
            .field("limit", &self.limit.get())
            .field("running", &self.running.get())
            .field("free", &self.free.get())
            .field("prefetch", &self.prefetch.get())
            .finish_non_exhaustive()
    }
}

impl PoolGauges {
    /// The gauges, registered in `registry`, at zero until a sampler is
    /// set.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let g = PoolGauges {
            limit: Gauge::default(),
            running: Gauge::default(),
            free: Gauge::default(),
            prefetch: Gauge::default(),
            sampler: Mutex::new(None),
        };
        registry.register("pool_limit", "Tasks the pool runs at once", g.limit.clone());
        registry.register("pool_running", "Tasks running", g.running.clone());
        registry.register(
            "pool_free",
            "Free pool slots (limit minus running)",
            g.free.clone(),
        );
        registry.register(
            "prefetch_window",
            "Messages the worker may hold unacked (concurrency times prefetch multiplier)",
            g.prefetch.clone(),
        );
        g
    }

    /// Reads the gauges from `sampler` from now on; a sampler that answers
    /// `None` (its worker is gone) leaves the last values.
    pub(crate) fn watch(&self, sampler: impl Fn() -> Option<PoolSample> + Send + Sync + 'static) {
        *self.sampler.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(sampler));
    }

    /// Sets the gauges from the sampler.
    pub(crate) fn refresh(&self) {
        let sample = self
            .sampler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|s| s());
        if let Some(s) = sample {
            self.limit.set(s.limit);
            self.running.set(s.running);
            self.free.set(s.free);
            self.prefetch.set(s.prefetch);
        }
    }
}
