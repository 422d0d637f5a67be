//! Unit tests of [`super::Recorder`]: each fact moves the report, the
//! `processed` and `total` counts, the metrics and the events together.

use std::sync::Arc;
use std::time::Duration;

use greenpool::{KillSignal, Outcome, TerminateReason, Termination};
use serde_json::{json, Value};

use super::*;
use crate::events::Captured;
use crate::task_error::TaskError;

/// The task counters of the metrics, in the order [`Counts::metrics`]
/// lists them.
const METRICS: [&str; 6] = [
    "received",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
];

/// A recorder with its metrics and the events it sent.
struct Bench {
    recorder: Recorder,
    metrics: Arc<WorkerMetrics>,
    events: Captured,
}

/// A recorder with task events on or off.
fn bench(task_events: bool) -> Bench {
    let metrics = Arc::new(WorkerMetrics::new());
    let (events, captured) = EventDispatcher::captured("celery@test", task_events);
    Bench {
        recorder: Recorder::new(Arc::clone(&metrics), events),
        metrics,
        events: captured,
    }
}

/// A message of `t.x` with id `id1`.
fn message() -> TaskMessage {
    let mut msg = TaskMessage::new("t.x", vec![json!(1)], serde_json::Map::new());
    msg.headers.id = "id1".to_owned();
    msg
}

/// Every count the recorder makes, read back.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    /// The worker's report.
    report: WorkerReport,
    /// Heartbeats' `processed`.
    processed: u64,
    /// `stats.total` of `t.x`.
    total: u64,
    /// `greenpool_tasks_<kind>_total{task="t.x"}`, by [`METRICS`].
    metrics: [u64; 6],
    /// Observations of `greenpool_task_runtime_seconds{task="t.x"}`.
    runtimes: u64,
    /// The types of the events sent.
    events: Vec<String>,
}

/// The value of the series `name{task="t.x"}` in `text`, 0 when absent.
fn series(text: &str, name: &str) -> u64 {
    let prefix = format!("{name}{{task=\"t.x\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.parse().unwrap())
}

/// Reads every count of `b` (and takes the events sent so far).
fn counts(b: &mut Bench) -> Counts {
    let text = b.metrics.render();
    let mut metrics = [0; 6];
    for (slot, kind) in metrics.iter_mut().zip(METRICS) {
        *slot = series(&text, &format!("greenpool_tasks_{kind}_total"));
    }
    Counts {
        report: b.recorder.report(0),
        processed: b.recorder.processed(),
        total: b
            .recorder
            .totals()
            .get("t.x")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        metrics,
        runtimes: series(&text, "greenpool_task_runtime_seconds_count"),
        events: b
            .events
            .take()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect(),
    }
}

/// The metrics array with one on `kind`.
fn one(kind: &str) -> [u64; 6] {
    METRICS.map(|k| u64::from(k == kind))
}

/// A report with the given counts (none restored).
fn report(received: u64, succeeded: u64, failed: u64, revoked: u64, retried: u64) -> WorkerReport {
    WorkerReport {
        received,
        succeeded,
        failed,
        revoked,
        retried,
        restored: 0,
    }
}

/// What a report of `state` with `result` looks like.
fn reported(state: TaskState, result: Value) -> Report {
    Report {
        state,
        result,
        traceback: Some("Traceback".to_owned()),
    }
}

/// A job that ran for 5 ms to `r`.
fn ran(r: Result<Value, TaskError>) -> Outcome<TaskOutput> {
    Outcome::Completed(TaskOutput::Ran(r, Duration::from_millis(5)))
}

/// A job killed for `reason`, with `signal`.
fn killed(reason: TerminateReason, signal: Option<KillSignal>) -> Outcome<TaskOutput> {
    Outcome::Terminated(Termination { signal, reason })
}

/// The event types `kinds` as owned strings.
fn types(kinds: &[&str]) -> Vec<String> {
    kinds.iter().map(|k| (*k).to_owned()).collect()
}

#[test]
fn delivered_counts_received_in_the_report_only() {
    let mut b = bench(true);
    b.recorder.delivered();
    let want = Counts {
        report: report(1, 0, 0, 0, 0),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn unrunnable_counts_failed_in_the_report_only() {
    let mut b = bench(true);
    b.recorder.delivered();
    b.recorder.unrunnable();
    let want = Counts {
        report: report(1, 0, 1, 0, 0),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn received_counts_the_metric_and_sends_the_event() {
    let mut b = bench(true);
    b.recorder.received(&message());
    let want = Counts {
        metrics: one("received"),
        events: types(&["task-received"]),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn started_counts_the_total_and_sends_the_event() {
    let mut b = bench(true);
    b.recorder.started("t.x", "id1");
    b.recorder.started("t.x", "id2");
    let want = Counts {
        total: 2,
        events: types(&["task-started", "task-started"]),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
    assert_eq!(
        b.recorder.totals(),
        json!({"t.x": 2}).as_object().cloned().unwrap()
    );
}

#[test]
fn success_moves_the_report_processed_metrics_and_event_together() {
    let mut b = bench(true);
    let outcome = ran(Ok(json!(3)));
    let r = reported(TaskState::Success, json!(3));
    b.recorder.settled(
        &message(),
        Some(Counter::Succeeded),
        &Event::Finished(&outcome),
        Some(&r),
    );
    let want = Counts {
        report: report(0, 1, 0, 0, 0),
        processed: 1,
        metrics: one("succeeded"),
        runtimes: 1,
        events: types(&["task-succeeded"]),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn success_event_carries_the_runtime() {
    let mut b = bench(true);
    let outcome = ran(Ok(json!(3)));
    let r = reported(TaskState::Success, json!(3));
    let event = Event::Finished(&outcome);
    b.recorder
        .settled(&message(), Some(Counter::Succeeded), &event, Some(&r));
    let sent = b.events.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["uuid"], "id1");
    assert_eq!(sent[0]["result"], "3");
    assert_eq!(sent[0]["runtime"], json!(0.005));
}

#[test]
fn failure_of_a_task_that_ran_counts_its_runtime() {
    let mut b = bench(true);
    let e = TaskError::value_error("boom");
    let r = reported(TaskState::Failure, e.to_json());
    let outcome = ran(Err(e));
    b.recorder.settled(
        &message(),
        Some(Counter::Failed),
        &Event::Finished(&outcome),
        Some(&r),
    );
    let want = Counts {
        report: report(0, 0, 1, 0, 0),
        processed: 1,
        metrics: one("failed"),
        runtimes: 1,
        events: types(&["task-failed"]),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn failure_by_the_time_limit_has_no_runtime() {
    let mut b = bench(true);
    let outcome = killed(TerminateReason::TimeLimit, None);
    let r = reported(TaskState::Failure, json!({"exc_type": "TimeLimitExceeded"}));
    b.recorder.settled(
        &message(),
        Some(Counter::Failed),
        &Event::Finished(&outcome),
        Some(&r),
    );
    let want = Counts {
        report: report(0, 0, 1, 0, 0),
        processed: 1,
        metrics: one("failed"),
        events: types(&["task-failed"]),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn a_retry_is_not_processed() {
    let mut b = bench(true);
    let e = TaskError::retry(Duration::from_secs(1));
    let r = reported(TaskState::Retry, e.to_json());
    let outcome = ran(Err(e));
    b.recorder.settled(
        &message(),
        Some(Counter::Retried),
        &Event::Finished(&outcome),
        Some(&r),
    );
    let want = Counts {
        report: report(0, 0, 0, 0, 1),
        processed: 0,
        metrics: one("retried"),
        runtimes: 1,
        events: types(&["task-retried"]),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn killed_by_the_pool_is_revoked_and_terminated() {
    let mut b = bench(true);
    let outcome = killed(TerminateReason::Killed, Some(KillSignal::Kill));
    let r = reported(TaskState::Revoked, json!({"exc_type": "TaskRevokedError"}));
    b.recorder.settled(
        &message(),
        Some(Counter::Revoked),
        &Event::Finished(&outcome),
        Some(&r),
    );
    let text = b.metrics.render();
    assert_eq!(series(&text, "greenpool_tasks_revoked_total"), 1);
    assert_eq!(b.recorder.report(0), report(0, 0, 0, 1, 0));
    assert_eq!(b.recorder.processed(), 1);
    let sent = b.events.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "task-revoked");
    assert_eq!(sent[0]["terminated"], true);
    assert_eq!(sent[0]["signum"], 9);
    assert_eq!(sent[0]["expired"], false);
}

#[test]
fn revoked_terminated_before_start_and_expired_each_count_once() {
    // (event, terminated, signum, expired)
    let cases = [
        (Event::Revoked(Some(15)), true, json!(15), false),
        (Event::Revoked(None), false, Value::Null, false),
        (Event::Expired, false, Value::Null, true),
    ];
    for (event, terminated, signum, expired) in cases {
        let mut b = bench(true);
        let r = reported(TaskState::Revoked, json!({"exc_type": "TaskRevokedError"}));
        b.recorder
            .settled(&message(), Some(Counter::Revoked), &event, Some(&r));
        let sent = b.events.take();
        assert_eq!(sent.len(), 1, "{event:?}");
        assert_eq!(sent[0]["type"], "task-revoked");
        assert_eq!(sent[0]["terminated"], terminated, "{event:?}");
        assert_eq!(sent[0]["signum"], signum, "{event:?}");
        assert_eq!(sent[0]["expired"], expired, "{event:?}");
        let want = Counts {
            report: report(0, 0, 0, 1, 0),
            processed: 1,
            metrics: one("revoked"),
            ..Counts::default()
        };
        assert_eq!(counts(&mut b), want, "{event:?}");
    }
}

#[test]
fn nothing_decided_counts_nothing() {
    let mut b = bench(true);
    b.recorder.settled(&message(), None, &Event::None, None);
    assert_eq!(counts(&mut b), Counts::default());
}

#[test]
fn rejected_counts_the_metric_and_sends_the_event() {
    let mut b = bench(true);
    b.recorder.rejected(&message(), true);
    let sent = b.events.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "task-rejected");
    assert_eq!(sent[0]["requeue"], true);
    let want = Counts {
        metrics: one("rejected"),
        ..Counts::default()
    };
    assert_eq!(counts(&mut b), want);
}

#[test]
fn with_task_events_off_the_counts_still_move() {
    let mut b = bench(false);
    let msg = message();
    let outcome = ran(Ok(json!(3)));
    let r = reported(TaskState::Success, json!(3));
    b.recorder.delivered();
    b.recorder.received(&msg);
    b.recorder.started("t.x", "id1");
    b.recorder.settled(
        &msg,
        Some(Counter::Succeeded),
        &Event::Finished(&outcome),
        Some(&r),
    );
    let mut metrics = one("received");
    metrics[1] = 1;
    let want = Counts {
        report: report(1, 1, 0, 0, 0),
        processed: 1,
        total: 1,
        metrics,
        runtimes: 1,
        events: Vec::new(),
    };
    assert_eq!(counts(&mut b), want);
    // Worker events still go out.
    b.recorder
        .events()
        .send("worker-heartbeat", serde_json::Map::new());
    assert_eq!(b.events.take().len(), 1);
}

#[test]
fn a_request_s_whole_life_agrees_everywhere() {
    // Received, started, retried; then received again, started, succeeded.
    let mut b = bench(true);
    let msg = message();
    let e = TaskError::retry(Duration::from_secs(1));
    let retry = reported(TaskState::Retry, e.to_json());
    let first = ran(Err(e));
    let success = reported(TaskState::Success, json!(3));
    let second = ran(Ok(json!(3)));
    for (counter, outcome, r) in [
        (Counter::Retried, &first, &retry),
        (Counter::Succeeded, &second, &success),
    ] {
        b.recorder.delivered();
        b.recorder.received(&msg);
        b.recorder.started("t.x", "id1");
        b.recorder
            .settled(&msg, Some(counter), &Event::Finished(outcome), Some(r));
    }
    let c = counts(&mut b);
    assert_eq!(c.report, report(2, 1, 0, 0, 1));
    assert_eq!(c.processed, 1, "the retry is not processed");
    assert_eq!(c.total, 2);
    assert_eq!(c.metrics, [2, 1, 0, 1, 0, 0]);
    assert_eq!(c.runtimes, 2);
    assert_eq!(
        c.events,
        types(&[
            "task-received",
            "task-started",
            "task-retried",
            "task-received",
            "task-started",
            "task-succeeded",
        ])
    );
}
