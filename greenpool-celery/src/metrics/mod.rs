//! Prometheus metrics of a worker, served as text on `GET /metrics` with
//! `--metrics <addr>` ([`WorkerConfig::metrics`](crate::WorkerConfig)).
//!
//! One concept per file: [`tasks`] (counters by task name and the run
//! time histogram, recorded where the task events are sent, so the counts
//! agree with what `celery events` and Flower see), [`pool`] (the pool's
//! limit, running and free slots and the prefetch window, read at each
//! scrape), [`reconnects`] (connections of the connection layer restored
//! after a loss) and [`http`] (the listener).
//!
//! Every metric is named `greenpool_…`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `greenpool_tasks_received_total` | counter | `task` |
//! | `greenpool_tasks_succeeded_total` | counter | `task` |
//! | `greenpool_tasks_failed_total` | counter | `task` |
//! | `greenpool_tasks_retried_total` | counter | `task` |
//! | `greenpool_tasks_revoked_total` | counter | `task` |
//! | `greenpool_tasks_rejected_total` | counter | `task` |
//! | `greenpool_task_runtime_seconds` | histogram | `task` |
//! | `greenpool_pool_limit`, `_running`, `_free` | gauge | |
//! | `greenpool_prefetch_window` | gauge | |
//! | `greenpool_broker_reconnects_total` | counter | `link` |

pub(crate) mod http;
mod pool;
mod reconnects;
mod tasks;

use prometheus_client::registry::Registry;

use self::pool::PoolGauges;
pub(crate) use self::pool::PoolSample;
use self::reconnects::Reconnects;
use self::tasks::TaskMetrics;

/// The metrics of one worker: what its `/metrics` endpoint serves.
///
/// [`Worker::metrics`](crate::Worker::metrics) hands it out, so a program
/// that embeds the worker can serve [`render`](Self::render) itself.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    pub(crate) tasks: TaskMetrics,
    pub(crate) pool: PoolGauges,
    pub(crate) reconnects: Reconnects,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Every metric at zero, registered under the `greenpool_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("greenpool");
        let tasks = TaskMetrics::register(&mut registry);
        let pool = PoolGauges::register(&mut registry);
        let reconnects = Reconnects::register(&mut registry);
        WorkerMetrics {
            registry,
            tasks,
            pool,
            reconnects,
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4), with the
    /// pool gauges read now.
    pub fn render(&self) -> String {
        self.pool.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_counts_by_task_name() {
        let m = WorkerMetrics::new();
        m.tasks.event("task-received", "tasks.add");
        m.tasks.event("task-received", "tasks.add");
        m.tasks.event("task-succeeded", "tasks.add");
        m.tasks.event("task-started", "tasks.add");
        m.tasks.runtime("tasks.add", Duration::from_millis(20));
        m.reconnects.counter("broker").inc();
        let text = m.render();
        assert!(
            text.contains("greenpool_tasks_received_total{task=\"tasks.add\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("greenpool_tasks_succeeded_total{task=\"tasks.add\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("greenpool_task_runtime_seconds_count{task=\"tasks.add\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("greenpool_broker_reconnects_total{link=\"broker\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("greenpool_pool_limit 0\n"), "{text}");
    }
}
