//! Task counters by task name and the run-time histogram, recorded by the
//! node's recorder (`control/recorder.rs`) with the matching task event
//! and the report's counts, whether task events are on or not.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
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

/// The label of task `name`.
fn label(name: &str) -> TaskLabel {
    TaskLabel {
        task: name.to_owned(),
    }
}

/// The task events that are counted, in the order of
/// [`TaskMetrics::counters`].
const COUNTED: [&str; 6] = [
    "task-received",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
];

/// One task name's series, each looked up in its family the first time
/// it is used and kept: counting then takes no label (no string to
/// allocate) and no family lookup.
#[derive(Debug, Default)]
struct Named {
    counters: [OnceLock<Counter>; COUNTED.len()],
    runtime: OnceLock<Histogram>,
}

/// Counters of task events and the run-time histogram.
#[derive(Debug)]
pub(crate) struct TaskMetrics {
    /// received, succeeded, failed, retried, revoked, rejected
    /// ([`COUNTED`]).
    counters: [Family<TaskLabel, Counter>; COUNTED.len()],
    runtime: Runtimes,
    /// The series found so far, by task name (as many as the families
    /// hold: one per name seen).
    named: RwLock<HashMap<String, Arc<Named>>>,
}

impl TaskMetrics {
    /// The families, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = TaskMetrics {
            counters: Default::default(),
            runtime: Family::new_with_constructor(runtime_buckets),
            named: RwLock::default(),
        };
        let [received, succeeded, failed, retried, revoked, rejected] = &m.counters;
        for (name, help, family) in [
            (
                "tasks_received",
                "Task requests received (task-received events)",
                received,
            ),
            (
                "tasks_succeeded",
                "Tasks that returned a value (task-succeeded events)",
                succeeded,
            ),
            (
                "tasks_failed",
                "Tasks that failed (task-failed events)",
                failed,
            ),
            (
                "tasks_retried",
                "Retries asked for by tasks (task-retried events)",
                retried,
            ),
            (
                "tasks_revoked",
                "Tasks revoked, expired or terminated (task-revoked events)",
                revoked,
            ),
            (
                "tasks_rejected",
                "Task messages rejected (task-rejected events)",
                rejected,
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
        let Some(i) = COUNTED.iter().position(|k| *k == kind) else {
            return;
        };
        let named = self.named(name);
        let (Some(cell), Some(family)) = (named.counters.get(i), self.counters.get(i)) else {
            return;
        };
        cell.get_or_init(|| family.get_or_create(&label(name)).clone())
            .inc();
    }

    /// Records that a run of task `name` took `took`.
    pub(crate) fn runtime(&self, name: &str, took: Duration) {
        self.named(name)
            .runtime
            .get_or_init(|| self.runtime.get_or_create(&label(name)).clone())
            .observe(took.as_secs_f64());
    }

    /// The series of task `name`, made the first time the name is seen.
    fn named(&self, name: &str) -> Arc<Named> {
        let known = self
            .named
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        known.unwrap_or_else(|| {
            Arc::clone(
                self.named
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(name.to_owned())
                    .or_default(),
            )
        })
    }
}
