//! Unit tests of [`super::decide`]: one per outcome.

use std::borrow::Cow;
use std::time::Duration;

use greenpool::{Outcome, PanicInfo, TerminateReason, Termination};
use serde_json::{json, Value};

use super::*;
use crate::backend::TaskState;
use crate::protocol::{Signature, TaskMessage, Timestamp};
use crate::task_error::TaskError;

/// A message of `t.x` with id `id1`, and its envelope as received.
fn message() -> (TaskMessage, Received) {
    let mut msg = TaskMessage::new("t.x", vec![json!(1)], serde_json::Map::new());
    msg.headers.id = "id1".to_owned();
    let raw = Received::Text(msg.encode().unwrap());
    (msg, raw)
}

/// The facts of a plain early-ack request of `msg` that ended `outcome`.
fn input<'a>(
    msg: &'a TaskMessage,
    received: &'a Received,
    outcome: &'a Outcome<TaskOutput>,
) -> OutcomeInput<'a> {
    OutcomeInput {
        msg,
        outcome,
        received,
        queue: "celery",
        max_retries: Some(3),
        ignore_result: false,
        unacked: false,
        hard_limit: None,
        revoked: Revoked::No,
        joins_chords: true,
    }
}

/// A job that ran the task to `r`.
fn ran(r: Result<Value, TaskError>) -> Outcome<TaskOutput> {
    Outcome::Completed(TaskOutput::Ran(r, Duration::from_millis(5)))
}

/// The decision's report (there must be one).
fn report<'d>(d: &'d Decision<'_>) -> &'d Report {
    d.report.as_ref().unwrap()
}

/// A signature from its JSON object.
fn signature(v: Value) -> Signature {
    match v {
        Value::Object(m) => Signature(m),
        _ => unreachable!(),
    }
}

#[test]
fn a_chord_step_sets_its_size_and_sends_its_header_or_fails_visibly() {
    let (mut msg, raw) = message();
    let part = json!({"task": "t.a", "args": [], "kwargs": {}, "options": {}, "immutable": false});
    msg.embed.chain = Some(vec![signature(json!({
        "task": "celery.chord", "subtask_type": "chord", "options": {"task_id": "c1"},
        "kwargs": {"header": [part.clone(), part], "body": {"task": "t.sum", "args": []}},
    }))]);
    let outcome = ran(Ok(json!(1)));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Success);
    assert_eq!(d.chord_sizes, vec![("c1".to_owned(), 2)]);
    assert_eq!(d.publish.len(), 2);
    // Where the backend cannot join, the task fails with the reason
    // rather than succeed with a chord that never ends.
    let mut i = input(&msg, &raw, &outcome);
    i.joins_chords = false;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Failure);
    assert_eq!(report(&d).state, TaskState::Failure);
    assert_eq!(report(&d).result["exc_type"], json!("NotImplementedError"));
    assert!(d.publish.is_empty() && d.chord_sizes.is_empty());
}

#[test]
fn success_stores_the_result_and_sends_the_links() {
    let (mut msg, raw) = message();
    msg.embed.callbacks = Some(vec![signature(json!({"task": "t.next", "args": []}))]);
    let outcome = ran(Ok(json!(42)));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Success);
    assert_eq!(d.counter, Some(Counter::Succeeded));
    assert!(matches!(d.log, Log::Succeeded(t) if t == Duration::from_millis(5)));
    assert!(matches!(d.event, Event::Finished(_)));
    assert_eq!(report(&d).state, TaskState::Success);
    assert_eq!(report(&d).result, json!(42));
    assert!(report(&d).traceback.is_none());
    assert!(d.store);
    assert_eq!(d.publish.len(), 1, "the link callback");
    let next = TaskMessage::from_envelope(d.publish[0].message.clone()).unwrap();
    assert_eq!(next.headers.task, "t.next");
    assert_eq!(next.args, vec![json!(42)]);
    assert_eq!(d.fate, Fate::Ack);
    assert_eq!(d.rejected, None);
}

#[test]
fn ignore_result_stores_nothing() {
    let (msg, raw) = message();
    let outcome = ran(Ok(json!(1)));
    let mut i = input(&msg, &raw, &outcome);
    i.ignore_result = true;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Success);
    assert!(!d.store);
    assert!(d.report.is_some(), "still reported to the events");
}

#[test]
fn retry_sends_the_message_again_with_one_more_retry() {
    let (msg, raw) = message();
    let outcome = ran(Err(TaskError::retry(Duration::from_secs(10))));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Retry);
    assert_eq!(d.counter, Some(Counter::Retried));
    assert!(matches!(d.log, Log::Retry(_)));
    assert_eq!(report(&d).state, TaskState::Retry);
    assert!(report(&d).traceback.is_some());
    assert_eq!(d.publish.len(), 1);
    let again = TaskMessage::from_envelope(d.publish[0].message.clone()).unwrap();
    assert_eq!(again.headers.id, "id1");
    assert_eq!(again.headers.retries, 1);
    assert!(again.headers.eta.is_some_and(|e| !e.is_past()));
    assert_eq!(d.fate, Fate::Ack);
}

#[test]
fn retry_with_retries_used_up_fails_with_max_retries_exceeded() {
    let (mut msg, raw) = message();
    msg.headers.retries = 3;
    let outcome = ran(Err(TaskError::retry(Duration::from_secs(1))));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Failure);
    assert_eq!(d.counter, Some(Counter::Failed));
    assert!(d.publish.is_empty(), "no retry sent");
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.exc_type(), "MaxRetriesExceededError");
    assert_eq!(e.exc_module(), "celery.exceptions");
    assert!(matches!(&d.log, Log::Unexpected(Cow::Owned(_))));
    // A task's own error given with the retry is reported as it is.
    let own = ran(Err(
        TaskError::value_error("down").retry_after(Duration::from_secs(1))
    ));
    let d = decide(&input(&msg, &raw, &own));
    assert_eq!(d.verdict, Verdict::Failure);
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.exc_type(), "ValueError");
    assert!(matches!(&d.log, Log::Unexpected(Cow::Borrowed(_))));
}

#[test]
fn retry_beyond_the_clocks_fails_with_why() {
    let (msg, raw) = message();
    let outcome = ran(Err(TaskError::retry(Duration::MAX)));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Failure);
    assert!(matches!(d.log, Log::CannotRetry(_)));
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.exc_type(), "ValueError");
}

#[test]
fn terminated_by_revoke_reports_revoked_with_its_signal() {
    let (msg, raw) = message();
    let outcome = Outcome::Terminated(Termination {
        signal: None,
        reason: TerminateReason::Killed,
    });
    let mut i = input(&msg, &raw, &outcome);
    i.revoked = Revoked::Terminated(15);
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Revoked);
    assert_eq!(d.counter, Some(Counter::Revoked));
    assert!(matches!(d.log, Log::Terminated(15)));
    assert!(matches!(d.event, Event::Revoked(Some(15))));
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.exc_type(), "TaskRevokedError");
    assert_eq!(e.args(), &[json!("terminated")]);
    assert!(d.publish.is_empty());
}

#[test]
fn killed_by_the_pool_reports_revoked() {
    let (msg, raw) = message();
    let outcome = Outcome::Terminated(Termination {
        signal: None,
        reason: TerminateReason::Killed,
    });
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Revoked);
    assert!(matches!(d.log, Log::Killed));
    assert!(matches!(d.event, Event::Finished(_)));
    assert_eq!(report(&d).state, TaskState::Revoked);
}

#[test]
fn revoked_before_start_is_discarded() {
    let (msg, raw) = message();
    let outcome = ran(Err(TaskError::new("TaskRevokedError", "revoked")));
    assert!(may_be_revoked(&outcome));
    let mut i = input(&msg, &raw, &outcome);
    i.revoked = Revoked::BeforeStart;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Revoked);
    assert!(matches!(d.log, Log::DiscardedRevoked));
    assert!(matches!(d.event, Event::Revoked(None)));
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.args(), &[json!("revoked")]);
}

#[test]
fn expired_at_start_reports_revoked_expired() {
    let (msg, raw) = message();
    let at = Timestamp::now();
    let outcome = Outcome::Completed(TaskOutput::Expired(Some(at)));
    let mut i = input(&msg, &raw, &outcome);
    i.unacked = true;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Expired);
    assert_eq!(d.counter, Some(Counter::Revoked));
    assert!(matches!(d.log, Log::Expired(Some(t)) if t == at));
    assert!(matches!(d.event, Event::Expired));
    assert_eq!(report(&d).state, TaskState::Revoked);
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.args(), &[json!("expired")]);
    assert_eq!(d.fate, Fate::Ack);
}

#[test]
fn reject_with_requeue_puts_an_unacked_message_back() {
    let (msg, raw) = message();
    let outcome = ran(Err(TaskError::reject("busy", true)));
    let mut i = input(&msg, &raw, &outcome);
    i.unacked = true;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Reject { requeue: true });
    assert_eq!(d.counter, None);
    assert!(d.report.is_none(), "nothing stored");
    assert!(matches!(d.event, Event::None));
    match &d.fate {
        Fate::Requeue(p) => {
            assert_eq!(
                (p.exchange.as_str(), p.routing_key.as_str()),
                ("", "celery")
            );
            assert_eq!(p.message.headers["redelivered"], json!(true));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.rejected, Some(true));
    // Unreadable envelope: dropped.
    let unreadable = Received::Text("not json".to_owned());
    i.received = &unreadable;
    assert_eq!(decide(&i).fate, Fate::Unrequeueable);
    // Acked at the start: nothing more to do, no task-rejected.
    i.unacked = false;
    let d = decide(&i);
    assert_eq!(d.rejected, None);
    assert!(d.report.is_none());
}

#[test]
fn reject_without_requeue_fails_and_drops_the_message() {
    let (mut msg, raw) = message();
    msg.embed.errbacks = Some(vec![signature(json!({"task": "t.err", "args": []}))]);
    let outcome = ran(Err(TaskError::reject("bad input", false)));
    let mut i = input(&msg, &raw, &outcome);
    i.unacked = true;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Reject { requeue: false });
    assert_eq!(d.counter, Some(Counter::Failed));
    assert_eq!(report(&d).state, TaskState::Failure);
    assert!(matches!(d.event, Event::Finished(_)));
    assert!(d.publish.is_empty(), "no link errors for a reject");
    assert_eq!(d.fate, Fate::Ack);
    assert_eq!(d.rejected, Some(false));
}

#[test]
fn failure_from_an_error_sends_the_link_errors() {
    let (mut msg, raw) = message();
    msg.embed.errbacks = Some(vec![
        signature(json!({"task": "t.err", "args": []})),
        signature(json!({"task": "t.bad", "options": {"countdown": 1e19}})),
    ]);
    let outcome = ran(Err(TaskError::value_error("nope")));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Failure);
    assert_eq!(d.counter, Some(Counter::Failed));
    assert!(matches!(&d.log, Log::Unexpected(Cow::Borrowed(_))));
    assert_eq!(report(&d).state, TaskState::Failure);
    let tb = report(&d).traceback.as_deref().unwrap();
    assert!(tb.contains("ValueError: nope"), "{tb}");
    assert_eq!(d.publish.len(), 1);
    let errback = TaskMessage::from_envelope(d.publish[0].message.clone()).unwrap();
    assert_eq!(errback.args, vec![json!("id1")]);
    assert_eq!(d.skipped.len(), 1, "the unusable link error is skipped");
}

#[test]
fn failure_from_a_panic() {
    let (msg, raw) = message();
    let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
    let outcome = Outcome::Panicked(PanicInfo::from_payload(&*payload));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Failure);
    assert!(matches!(d.log, Log::Panicked(..)));
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.exc_type(), "RuntimeError");
    assert_eq!(e.args(), &[json!("task panicked: boom")]);
}

#[test]
fn hard_time_limit_reports_the_limit_in_force() {
    let (mut msg, raw) = message();
    // The header says nothing (or something else): the limit the job ran
    // with (worker config or control command) is what is reported.
    msg.headers.timelimit.hard = None;
    let outcome = Outcome::Terminated(Termination {
        signal: None,
        reason: TerminateReason::TimeLimit,
    });
    let mut i = input(&msg, &raw, &outcome);
    i.hard_limit = Some(0.5);
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::Failure);
    assert!(matches!(d.log, Log::HardTimeLimit(s) if s == 0.5));
    let e = TaskError::from_json(&report(&d).result).unwrap();
    assert_eq!(e.exc_type(), "TimeLimitExceeded");
    assert_eq!(e.exc_module(), "celery.exceptions");
    assert_eq!(e.args(), &[json!(0.5)]);
}

#[test]
fn killed_by_shutdown_is_given_back() {
    let (msg, raw) = message();
    let outcome = Outcome::Terminated(Termination {
        signal: None,
        reason: TerminateReason::PoolTerminated,
    });
    let mut i = input(&msg, &raw, &outcome);
    i.unacked = true;
    let d = decide(&i);
    assert_eq!(d.verdict, Verdict::GiveBack);
    assert_eq!(d.counter, None);
    assert!(d.report.is_none());
    assert!(!d.store);
    assert!(d.publish.is_empty());
    assert_eq!(d.fate, Fate::Leave);
}

#[test]
fn follow_up_that_cannot_be_built_fails_the_task() {
    let (mut msg, raw) = message();
    msg.embed.callbacks = Some(vec![
        signature(json!({"task": "t.ok", "args": []})),
        signature(json!({"task": "t.bad", "options": {"countdown": 1e19}})),
    ]);
    msg.embed.errbacks = Some(vec![signature(json!({"task": "t.err", "args": []}))]);
    let outcome = ran(Ok(json!(1)));
    let d = decide(&input(&msg, &raw, &outcome));
    assert_eq!(d.verdict, Verdict::Failure);
    assert_eq!(d.counter, Some(Counter::Failed));
    assert!(matches!(&d.log, Log::Unexpected(Cow::Owned(_))));
    assert_eq!(report(&d).state, TaskState::Failure);
    assert!(d.publish.is_empty(), "no follow-up sent, no link error");
}

/// What the recorder counted for one decision: the report counter moved
/// (its name), `processed`, the task metric of the same name, the task
/// events of that kind, and `task-rejected` events.
#[derive(Debug, PartialEq)]
struct Counted {
    counter: Option<&'static str>,
    processed: u64,
    metric: u64,
    events: usize,
    rejected: usize,
}

/// Records decision `d` of `msg` as `settle::apply` does (one
/// `settled` call, then `rejected`) on a fresh recorder, and reads back
/// what moved.
fn counted(msg: &TaskMessage, d: &Decision<'_>) -> Counted {
    use crate::control::recorder::Recorder;
    use crate::events::EventDispatcher;
    use crate::metrics::WorkerMetrics;
    let metrics = std::sync::Arc::new(WorkerMetrics::new());
    let (events, mut sent) = EventDispatcher::captured("celery@test", true);
    let recorder = Recorder::new(std::sync::Arc::clone(&metrics), events);
    recorder.settled(msg, d.counter, &d.event, d.report.as_ref());
    if let Some(requeue) = d.rejected {
        recorder.rejected(msg, requeue);
    }
    let r = recorder.report(0);
    let moved = [
        ("succeeded", r.succeeded),
        ("failed", r.failed),
        ("revoked", r.revoked),
        ("retried", r.retried),
    ];
    assert!(moved.iter().map(|(_, n)| n).sum::<u64>() <= 1, "{moved:?}");
    let counter = moved.iter().find(|(_, n)| *n == 1).map(|(k, _)| *k);
    let text = metrics.render();
    let series = |kind: &str| {
        let prefix = format!("greenpool_tasks_{kind}_total{{task=\"t.x\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let sent = sent.take();
    let of_kind = |kind: &str| {
        sent.iter()
            .filter(|e| e["type"] == format!("task-{kind}"))
            .count()
    };
    Counted {
        counter,
        processed: recorder.processed(),
        metric: counter.map_or(0, series),
        events: counter.map_or(0, of_kind),
        rejected: of_kind("rejected"),
    }
}

#[test]
fn every_decision_is_counted_alike_in_the_report_the_metrics_and_the_events() {
    let (mut msg, raw) = message();
    let panic: Box<dyn std::any::Any + Send> = Box::new("boom");
    let killed = |reason| {
        Outcome::Terminated(Termination {
            signal: None,
            reason,
        })
    };
    // (case, outcome, revoked, unacked, the counter moved, processed,
    // task-rejected sent)
    let cases = [
        (
            "success",
            ran(Ok(json!(1))),
            Revoked::No,
            false,
            Some("succeeded"),
            1,
            0,
        ),
        (
            "error",
            ran(Err(TaskError::value_error("x"))),
            Revoked::No,
            false,
            Some("failed"),
            1,
            0,
        ),
        (
            "retry",
            ran(Err(TaskError::retry(Duration::from_secs(1)))),
            Revoked::No,
            false,
            Some("retried"),
            0,
            0,
        ),
        (
            "panic",
            Outcome::Panicked(PanicInfo::from_payload(&*panic)),
            Revoked::No,
            false,
            Some("failed"),
            1,
            0,
        ),
        (
            "time limit",
            killed(TerminateReason::TimeLimit),
            Revoked::No,
            false,
            Some("failed"),
            1,
            0,
        ),
        (
            "killed",
            killed(TerminateReason::Killed),
            Revoked::No,
            false,
            Some("revoked"),
            1,
            0,
        ),
        (
            "shutdown",
            killed(TerminateReason::PoolTerminated),
            Revoked::No,
            true,
            None,
            0,
            0,
        ),
        (
            "terminated",
            killed(TerminateReason::Killed),
            Revoked::Terminated(15),
            false,
            Some("revoked"),
            1,
            0,
        ),
        (
            "revoked",
            ran(Err(TaskError::new("TaskRevokedError", "revoked"))),
            Revoked::BeforeStart,
            false,
            Some("revoked"),
            1,
            0,
        ),
        (
            "expired",
            Outcome::Completed(TaskOutput::Expired(None)),
            Revoked::No,
            false,
            Some("revoked"),
            1,
            0,
        ),
        (
            "reject requeue",
            ran(Err(TaskError::reject("busy", true))),
            Revoked::No,
            true,
            None,
            0,
            1,
        ),
        (
            "reject drop",
            ran(Err(TaskError::reject("bad", false))),
            Revoked::No,
            true,
            Some("failed"),
            1,
            1,
        ),
    ];
    for (case, outcome, revoked, unacked, counter, processed, rejected) in cases {
        let mut i = input(&msg, &raw, &outcome);
        i.revoked = revoked;
        i.unacked = unacked;
        let d = decide(&i);
        let want = Counted {
            counter,
            processed,
            metric: u64::from(counter.is_some()),
            events: usize::from(counter.is_some()),
            rejected,
        };
        assert_eq!(counted(&msg, &d), want, "{case}");
    }
    // Retries used up: a failure, processed.
    msg.headers.retries = 3;
    let outcome = ran(Err(TaskError::retry(Duration::from_secs(1))));
    let d = decide(&input(&msg, &raw, &outcome));
    let c = counted(&msg, &d);
    assert_eq!(
        (c.counter, c.processed, c.metric, c.events),
        (Some("failed"), 1, 1, 1)
    );
}
