//! Task counters by task name and the run-time histogram, recorded where
//! the worker sends the matching task event (`control/hooks.rs`), whether
//! task events are on or not.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `task` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabel {
    task: String,
}

/// Bucket bounds of the run-time histogram, in seconds: 1 ms to about
/// 33 minutes, doubling.
fn runtime_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 22,
    ))
}

type Runtimes = Family<TaskLabel, Histogram, fn() -> Histogram>;

/// Counters of task events and the run-time histogram.
#[derive(Debug)]
pub(crate) struct TaskMetrics {
    received: Family<TaskLabel, Counter>,
    succeeded: Family<TaskLabel, Counter>,
    failed: Family<TaskLabel, Counter>,
    retried: Family<TaskLabel, Counter>,
    revoked: Family<TaskLabel, Counter>,
    rejected: Family<TaskLabel, Counter>,
    runtime: Runtimes,
}

impl TaskMetrics {
    /// The families, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = TaskMetrics {
            received: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            revoked: Family::default(),
            rejected: Family::default(),
            runtime: Family::new_with_constructor(runtime_buckets),
        };
        for (name, help, family) in [
            (
                "tasks_received",
                "Task requests received (task-received events)",
                &m.received,
            ),
            (
                "tasks_succeeded",
                "Tasks that returned a value (task-succeeded events)",
                &m.succeeded,
            ),
            (
                "tasks_failed",
                "Tasks that failed (task-failed events)",
                &m.failed,
            ),
            (
                "tasks_retried",
                "Retries asked for by tasks (task-retried events)",
                &m.retried,
            ),
            (
                "tasks_revoked",
                "Tasks revoked, expired or terminated (task-revoked events)",
                &m.revoked,
            ),
            (
                "tasks_rejected",
                "Task messages rejected (task-rejected events)",
                &m.rejected,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register_with_unit(
            "task_runtime",
            "Time tasks ran, from their start in the pool to their end",
            Unit::Seconds,
            m.runtime.clone(),
        );
        m
    }

    /// Counts task event `kind` (`task-received`, …) of task `name`;
    /// other kinds (`task-started`) count nothing.
    pub(crate) fn event(&self, kind: &str, name: &str) {
        let family = match kind {
            "task-received" => &self.received,
            "task-succeeded" => &self.succeeded,
            "task-failed" => &self.failed,
            "task-retried" => &self.retried,
            "task-revoked" => &self.revoked,
            "task-rejected" => &self.rejected,
            _ => return,
        };
        family
            .get_or_create(&TaskLabel {
                task: name.to_owned(),
            })
            .inc();
    }

    /// Records that a run of task `name` took `took`.
    pub(crate) fn runtime(&self, name: &str, took: Duration) {
        self.runtime
            .get_or_create(&TaskLabel {
                task: name.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}
