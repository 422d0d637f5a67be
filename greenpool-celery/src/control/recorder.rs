//! [`Recorder`]: the one place where what happened to a request is
//! counted. Each fact recorded here (a message delivered, a request
//! received, started, settled with a counter and an event, rejected, a
//! message that can never run) is turned into every count it moves, at
//! once:
//!
//! * the [`WorkerReport`] counters (received, succeeded, failed,
//!   revoked, retried);
//! * `processed` (heartbeats) and the totals by task name (`inspect
//!   stats`' `total`);
//! * the Prometheus task counters and the run-time histogram
//!   ([`WorkerMetrics`]);
//! * the task event (sent only while task events are on).
//!
//! So the report, `inspect stats`, `/metrics` and `celery events` cannot
//! disagree: nothing else bumps these counts. The recorder also owns the
//! node's [`EventDispatcher`]; worker events (online, heartbeat, offline)
//! go out through [`Recorder::events`] and count nothing.
//!
//! What each fact counts (kept as the worker always counted):
//!
//! | fact | report | processed | totals | metrics | event |
//! |---|---|---|---|---|---|
//! | [`delivered`](Recorder::delivered) | received | | | | |
//! | [`unrunnable`](Recorder::unrunnable) | failed | | | | |
//! | [`received`](Recorder::received) | | | | received | task-received |
//! | [`started`](Recorder::started) | | | +1 | | task-started |
//! | [`settled`](Recorder::settled): success | succeeded | +1 | | succeeded, runtime | task-succeeded |
//! | failure | failed | +1 | | failed (runtime if it ran) | task-failed |
//! | retry | retried | | | retried (runtime) | task-retried |
//! | killed, terminated, revoked, expired | revoked | +1 | | revoked | task-revoked |
//! | [`rejected`](Recorder::rejected) | | | | rejected | task-rejected |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use greenpool::{Outcome, TerminateReason};
use serde_json::{Map, Value};

use crate::backend::TaskState;
use crate::events::task as ev;
use crate::events::EventDispatcher;
use crate::metrics::WorkerMetrics;
use crate::outcome::{Counter, Event, Report, TaskOutput};
use crate::protocol::TaskMessage;
use crate::worker::WorkerReport;

/// The [`WorkerReport`]'s counts.
#[derive(Debug, Default)]
struct Counters {
    /// Messages taken off the queues.
    received: AtomicU64,
    /// Tasks that returned a value.
    succeeded: AtomicU64,
    /// Tasks that failed, and messages that could not run.
    failed: AtomicU64,
    /// Requests revoked (expired, terminated, or by remote control).
    revoked: AtomicU64,
    /// Retries sent on.
    retried: AtomicU64,
}

impl Counters {
    /// The counter `c` names.
    fn of(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::Succeeded => &self.succeeded,
            Counter::Failed => &self.failed,
            Counter::Revoked => &self.revoked,
            Counter::Retried => &self.retried,
        }
    }
}

/// Counts one on `c`.
fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Every count of a worker's requests, and the task events: see the
/// module documentation for what each fact counts.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The report's counts.
    counters: Counters,
    /// Tasks that ended (heartbeats' `processed`).
    processed: AtomicU64,
    /// Tasks started, by name (`stats.total`).
    totals: Mutex<BTreeMap<String, u64>>,
    /// The Prometheus metrics.
    metrics: Arc<WorkerMetrics>,
    /// The node's event dispatcher.
    events: EventDispatcher,
}

impl Recorder {
    /// A recorder with every count at zero, counting into `metrics` and
    /// sending task events through `events`.
    pub(crate) fn new(metrics: Arc<WorkerMetrics>, events: EventDispatcher) -> Self {
        Recorder {
            counters: Counters::default(),
            processed: AtomicU64::new(0),
            totals: Mutex::new(BTreeMap::new()),
            metrics,
            events,
        }
    }

    /// The event dispatcher: worker events, and turning task events on
    /// or off. Task events go out through the recording methods only
    /// (the dispatcher has no task-event call of its own).
    pub(crate) fn events(&self) -> &EventDispatcher {
        &self.events
    }

    /// A message was taken off a queue (report: `received`).
    pub(crate) fn delivered(&self) {
        bump(&self.counters.received);
    }

    /// A message that can never run (oversized, of an unregistered task,
    /// with unusable time limits) was failed before it was received
    /// (report: `failed`; no event, as Celery sends none).
    pub(crate) fn unrunnable(&self) {
        bump(&self.counters.failed);
    }

    /// A request passed its checks and is held: `task-received`.
    pub(crate) fn received(&self, msg: &TaskMessage) {
        self.task_event("task-received", &msg.headers.task, || ev::received(msg));
    }

    /// The job of task `name` with id `id` started: counted in the
    /// totals, `task-started` sent.
    pub(crate) fn started(&self, name: &str, id: &str) {
        {
            let mut t = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            match t.get_mut(name) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    t.insert(name.to_owned(), 1);
                }
            }
        }
        self.task_event("task-started", name, || ev::started(id));
    }

    /// A request of `msg` ended as decided (`request::outcome::decide`,
    /// or discarded as revoked or expired): the report's `counter`, then
    /// `event` with its counts (`processed` unless it is a retry, the
    /// metrics, the run time of a task that ran). `report` is what was
    /// reported (the state of [`Event::Finished`] is read from it).
    pub(crate) fn settled(
        &self,
        msg: &TaskMessage,
        counter: Option<Counter>,
        event: &Event<'_>,
        report: Option<&Report>,
    ) {
        if let Some(c) = counter {
            bump(self.counters.of(c));
        }
        let id = &msg.headers.id;
        let name = msg.headers.task.as_str();
        match (event, report) {
            (Event::Finished(outcome), Some(r)) => self.finished(msg, outcome, r),
            (Event::Revoked(signal), _) => {
                self.task_event("task-revoked", name, || {
                    ev::revoked(id, signal.is_some(), *signal, false)
                });
                bump(&self.processed);
            }
            (Event::Expired, _) => {
                bump(&self.processed);
                self.task_event("task-revoked", name, || ev::revoked(id, false, None, true));
            }
            _ => {}
        }
    }

    /// The event of a job's reported outcome `r`, with its counts.
    fn finished(&self, msg: &TaskMessage, outcome: &Outcome<TaskOutput>, r: &Report) {
        let id = &msg.headers.id;
        let name = msg.headers.task.as_str();
        if r.state != TaskState::Retry {
            bump(&self.processed);
        }
        let ran = match outcome {
            Outcome::Completed(TaskOutput::Ran(_, runtime)) => Some(*runtime),
            _ => None,
        };
        if let Some(runtime) = ran {
            self.metrics.tasks.runtime(name, runtime);
        }
        let (result, traceback) = (&r.result, r.traceback.as_deref());
        match r.state {
            TaskState::Success => {
                let runtime = ran.unwrap_or(Duration::ZERO);
                self.task_event("task-succeeded", name, || {
                    ev::succeeded(id, result, runtime)
                });
            }
            TaskState::Failure => {
                self.task_event("task-failed", name, || ev::failed(id, result, traceback))
            }
            TaskState::Retry => {
                self.task_event("task-retried", name, || ev::failed(id, result, traceback))
            }
            TaskState::Revoked => {
                let signum = outcome
                    .termination()
                    .filter(|t| t.reason == TerminateReason::Killed)
                    .and_then(|t| t.signal)
                    .map(greenpool::KillSignal::number);
                self.task_event("task-revoked", name, || {
                    ev::revoked(id, true, signum, false)
                });
            }
            _ => {}
        }
    }

    /// A request's message was rejected (the task raised `Reject` and
    /// its message was still unacked): `task-rejected` with `requeue`.
    pub(crate) fn rejected(&self, msg: &TaskMessage, requeue: bool) {
        self.task_event("task-rejected", &msg.headers.task, || {
            ev::rejected(&msg.headers.id, requeue)
        });
    }

    /// Tasks ended since start (heartbeats' `processed`).
    pub(crate) fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Tasks started since start, by name (`stats.total`).
    pub(crate) fn totals(&self) -> Map<String, Value> {
        self.totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect()
    }

    /// The worker's report: its counts, and the `restored` messages it
    /// gave back.
    pub(crate) fn report(&self, restored: u64) -> WorkerReport {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerReport {
            received: load(&c.received),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            revoked: load(&c.revoked),
            retried: load(&c.retried),
            restored,
        }
    }

    /// Sends task event `kind` of a task named `name` (when task events
    /// are on; `fields` is called only then, so building them costs
    /// nothing otherwise) and counts it in the metrics (always). The only
    /// place task events are sent from.
    fn task_event(&self, kind: &str, name: &str, fields: impl FnOnce() -> Map<String, Value>) {
        self.metrics.tasks.event(kind, name);
        if self.events.task_events() {
            self.events.send(kind, fields());
        }
    }
}

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
