//! Behaviour of the green `Timer` on a paused clock.
//!
//! Covers kombu's timer tests (`t/unit/asynchronous/test_timer.py`) and the
//! timer parts of Celery's eventlet tests (`t/unit/concurrency/test_eventlet.py`)
//! as behaviour: ordering, priorities, past etas, cancel, clear, repeats with
//! the early-run skip, panics going to `on_error`, and stop.
//!
//! Nothing here sleeps to synchronise: entries report through channels, and
//! "never fired" is proven by a dropped sender (the timer dropped the entry)
//! or by a later entry firing first on the current-thread runtime.

// Helpers outside #[test] fns are not covered by clippy.toml's test allowance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use greenpool::{CancelResult, Entry, Timer, TimerError, TimerRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{self, Instant};

const SEC: Duration = Duration::from_secs(1);

/// A closure that reports `name` and the instant it ran.
fn report(tx: &UnboundedSender<(&'static str, Instant)>, name: &'static str) -> impl Fn() {
    let tx = tx.clone();
    move || {
        let _ = tx.send((name, Instant::now()));
    }
}

/// Receives the next report, failing (not hanging) if none comes within a
/// virtual hour.
async fn next<T>(rx: &mut UnboundedReceiver<T>) -> Option<T> {
    time::timeout(Duration::from_secs(3600), rx.recv())
        .await
        .expect("no report within a virtual hour")
}

/// Receives `n` reports and returns their names.
async fn names(rx: &mut UnboundedReceiver<(&'static str, Instant)>, n: usize) -> Vec<&'static str> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(rx).await.expect("sender alive").0);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn entries_fire_in_eta_order_at_or_after_their_eta() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let start = Instant::now();
    timer.call_after(3 * SEC, report(&tx, "c"), 0).unwrap();
    timer.call_after(SEC, report(&tx, "a"), 0).unwrap();
    timer.call_at(start + 2 * SEC, report(&tx, "b"), 0).unwrap();
    for (name, secs) in [("a", 1), ("b", 2), ("c", 3)] {
        let (got, at) = next(&mut rx).await.unwrap();
        assert_eq!(got, name);
        assert!(at >= start + secs * SEC, "{name} fired before its eta");
    }
    assert!(timer.is_empty());
}

#[tokio::test(start_paused = true)]
async fn equal_etas_fire_by_priority_then_insertion_order() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let eta = Instant::now() + SEC;
    timer.call_at(eta, report(&tx, "p2"), 2).unwrap();
    timer.call_at(eta, report(&tx, "p0-first"), 0).unwrap();
    timer.call_at(eta, report(&tx, "p-1"), -1).unwrap();
    timer.call_at(eta, report(&tx, "p0-second"), 0).unwrap();
    timer.call_at(eta, report(&tx, "p1"), 1).unwrap();
    assert_eq!(
        names(&mut rx, 5).await,
        ["p-1", "p0-first", "p0-second", "p1", "p2"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_past_eta_fires_as_soon_as_possible() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    time::advance(10 * SEC).await;
    let now = Instant::now();
    timer
        .call_after(Duration::from_millis(1), report(&tx, "soon"), 0)
        .unwrap();
    timer
        .call_at(now - 5 * SEC, report(&tx, "past"), 9)
        .unwrap();
    timer.call_at(now, report(&tx, "now"), 0).unwrap();
    let (first, at) = next(&mut rx).await.unwrap();
    assert_eq!(first, "past", "the older eta fires first");
    assert_eq!(at, now, "a past eta does not wait for the clock");
    assert_eq!(names(&mut rx, 2).await, ["now", "soon"]);
}

#[tokio::test(start_paused = true)]
async fn cancel_before_firing_drops_the_entry_and_reports_cancelled() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let tref = timer.call_after(SEC, report(&tx, "cancelled"), 0).unwrap();
    timer.call_after(2 * SEC, report(&tx, "kept"), 0).unwrap();
    drop(tx);
    assert_eq!(timer.cancel(&tref), CancelResult::Cancelled);
    assert_eq!(timer.len(), 1);
    assert_eq!(names(&mut rx, 1).await, ["kept"]);
    // A ref keeps its entry alive; without it, every sender is gone: the
    // cancelled closure was dropped, never run.
    drop(tref);
    assert!(next(&mut rx).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn cancel_after_firing_or_twice_is_harmless_and_says_so() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let fired = timer.call_after(SEC, report(&tx, "fired"), 0).unwrap();
    let twice = timer.call_after(5 * SEC, report(&tx, "twice"), 0).unwrap();
    assert_eq!(names(&mut rx, 1).await, ["fired"]);
    assert_eq!(timer.cancel(&fired), CancelResult::NotPending);
    assert!(timer.cancel(&twice).was_pending());
    assert_eq!(timer.cancel(&twice), CancelResult::NotPending);
    assert!(timer.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stale_ref_never_cancels_an_entry_that_reuses_its_slot() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let old = timer.call_after(SEC, report(&tx, "old"), 0).unwrap();
    assert!(timer.cancel(&old).was_pending());
    timer.call_after(SEC, report(&tx, "new"), 0).unwrap();
    assert_eq!(timer.cancel(&old), CancelResult::NotPending);
    assert_eq!(names(&mut rx, 1).await, ["new"]);
}

#[tokio::test(start_paused = true)]
async fn a_ref_from_another_timer_cancels_nothing_here() {
    let (a, b) = (Timer::new(), Timer::new());
    let (tx, mut rx) = unbounded_channel();
    let from_a = a.call_after(SEC, report(&tx, "a"), 0).unwrap();
    b.call_after(SEC, report(&tx, "b"), 0).unwrap();
    assert_eq!(b.cancel(&from_a), CancelResult::NotPending);
    assert_eq!((a.len(), b.len()), (1, 1));
    let mut got = names(&mut rx, 2).await;
    got.sort_unstable();
    assert_eq!(got, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn queue_lists_pending_entries_in_firing_order_and_drops_fired_ones() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let start = Instant::now();
    let late = timer.call_after(3 * SEC, report(&tx, "late"), 0).unwrap();
    timer.call_after(SEC, report(&tx, "early"), 7).unwrap();
    timer.call_after(SEC, report(&tx, "earliest"), -7).unwrap();
    let listed: Vec<(Instant, i32)> = timer.queue().iter().map(|s| (s.eta, s.priority)).collect();
    assert_eq!(
        listed,
        [(start + SEC, -7), (start + SEC, 7), (start + 3 * SEC, 0)]
    );
    assert!(timer.queue()[2].tref.entry().ptr_eq(late.entry()));
    assert_eq!(names(&mut rx, 2).await, ["earliest", "early"]);
    assert_eq!(timer.queue().len(), 1, "fired entries leave the queue");
    assert!(timer.cancel(&timer.queue()[0].tref).was_pending());
    assert!(
        timer.queue().is_empty(),
        "cancelled entries leave the queue"
    );
    assert_eq!(timer.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn clear_cancels_every_pending_entry_and_the_timer_goes_on() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let one = timer.call_after(SEC, report(&tx, "one"), 0).unwrap();
    timer.call_after(2 * SEC, report(&tx, "two"), 0).unwrap();
    let series = timer
        .call_repeatedly(SEC, report(&tx, "series"), 0)
        .unwrap();
    assert_eq!(timer.clear(), 3);
    assert!(timer.is_empty() && timer.queue().is_empty());
    assert_eq!(timer.cancel(&one), CancelResult::NotPending);
    assert_eq!(timer.cancel(&series), CancelResult::NotPending);
    timer.call_after(5 * SEC, report(&tx, "after"), 0).unwrap();
    drop((tx, one, series));
    assert_eq!(names(&mut rx, 1).await, ["after"]);
    assert!(
        next(&mut rx).await.is_none(),
        "cleared entries were dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn call_repeatedly_runs_every_interval_until_cancelled() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let start = Instant::now();
    let tref = timer
        .call_repeatedly(2 * SEC, report(&tx, "tick"), 3)
        .unwrap();
    assert!(tref.entry().is_repeating());
    let pending = timer.queue();
    assert_eq!(
        (pending.len(), pending[0].eta, pending[0].priority),
        (1, start + 2 * SEC, 3)
    );
    for n in 1..=3u32 {
        let (_, at) = next(&mut rx).await.unwrap();
        assert_eq!(
            at,
            start + 2 * n * SEC,
            "run {n} comes one interval after the last"
        );
        assert_eq!(timer.len(), 1, "one pending occurrence per series");
    }
    assert_eq!(timer.cancel(&tref), CancelResult::Cancelled);
    assert!(timer.is_empty());
    assert_eq!(timer.cancel(&tref), CancelResult::NotPending);
    timer
        .call_after(60 * SEC, report(&tx, "canary"), 0)
        .unwrap();
    assert_eq!(names(&mut rx, 1).await, ["canary"], "no tick after cancel");
}

#[tokio::test(start_paused = true)]
async fn an_early_repeat_run_is_skipped_and_rescheduled_for_the_remainder() {
    let timer = Timer::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let (tx, mut rx) = unbounded_channel();
    let start = Instant::now();
    let tref = timer
        .call_repeatedly(
            10 * SEC,
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(Instant::now());
            },
            0,
        )
        .unwrap();
    assert_eq!(next(&mut rx).await, Some(start + 10 * SEC));
    time::advance(3 * SEC).await;

    // Applied by hand 3 s after the last run: too early, so skipped and
    // rescheduled for the remaining 7 s.
    timer.apply_entry(tref.entry()).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the early run was skipped");
    let pending = timer.queue();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].eta, start + 20 * SEC);

    // Entered to fire 1 s from now (4 s after the last run): skipped when
    // it fires, and rescheduled for the remainder again.
    timer.enter_after(tref.entry(), SEC, 0).unwrap();
    assert_eq!(timer.queue()[0].eta, start + 14 * SEC);
    assert_eq!(next(&mut rx).await, Some(start + 20 * SEC));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "only the on-time run ran");
    assert_eq!(timer.queue()[0].eta, start + 30 * SEC);

    // Applied once a whole interval has passed: runs, and the next run is
    // one interval later (the pending occurrence at 120 s is replaced).
    timer.enter_after(tref.entry(), 100 * SEC, 0).unwrap();
    time::advance(10 * SEC).await;
    assert_eq!(Instant::now(), start + 30 * SEC);
    timer.apply_entry(tref.entry()).await.unwrap();
    assert_eq!(rx.try_recv().ok(), Some(start + 30 * SEC));
    let pending = timer.queue();
    assert_eq!((pending.len(), pending[0].eta), (1, start + 40 * SEC));
    assert!(timer.cancel(&tref).was_pending());
}

#[tokio::test(start_paused = true)]
async fn a_series_cancelled_from_inside_its_run_stops() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    let own: Arc<OnceLock<TimerRef>> = Arc::new(OnceLock::new());
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let (t, o, r, sender) = (
        timer.clone(),
        Arc::clone(&outcomes),
        Arc::clone(&own),
        tx.clone(),
    );
    let runs = AtomicUsize::new(0);
    let tref = timer
        .call_repeatedly(
            SEC,
            move || {
                if runs.fetch_add(1, Ordering::SeqCst) == 1 {
                    let tref = r.get().expect("set before the first run");
                    o.lock().unwrap().push(t.cancel(tref));
                }
                let _ = sender.send(("run", Instant::now()));
            },
            0,
        )
        .unwrap();
    own.set(tref.clone()).unwrap();
    assert_eq!(names(&mut rx, 2).await, ["run", "run"]);
    assert_eq!(*outcomes.lock().unwrap(), [CancelResult::Cancelled]);
    assert!(timer.is_empty(), "not rescheduled after cancelling itself");
    assert_eq!(timer.cancel(&tref), CancelResult::NotPending);
    assert!(matches!(
        timer.enter_after(tref.entry(), SEC, 0),
        Err(TimerError::SeriesCancelled)
    ));
    timer
        .call_after(60 * SEC, report(&tx, "canary"), 0)
        .unwrap();
    assert_eq!(names(&mut rx, 1).await, ["canary"]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_entry_goes_to_on_error_and_the_timer_goes_on() {
    let timer = Timer::new();
    let (err_tx, mut errors) = unbounded_channel();
    timer.set_on_error(move |panic| {
        let _ = err_tx.send(panic.message().to_owned());
    });
    let (tx, mut rx) = unbounded_channel();
    timer.call_after(SEC, || panic!("one-shot"), 0).unwrap();
    let boom = Entry::new_async(|| async {
        tokio::task::yield_now().await;
        panic!("async {}", 42);
    });
    timer.enter_after(&boom, 2 * SEC, 0).unwrap();
    let series = timer
        .call_repeatedly(3 * SEC, || panic!("series"), 0)
        .unwrap();
    timer.call_after(4 * SEC, report(&tx, "after"), 0).unwrap();
    assert_eq!(next(&mut errors).await.as_deref(), Some("one-shot"));
    assert_eq!(next(&mut errors).await.as_deref(), Some("async 42"));
    assert_eq!(next(&mut errors).await.as_deref(), Some("series"));
    assert_eq!(names(&mut rx, 1).await, ["after"]);
    assert_eq!(
        next(&mut errors).await.as_deref(),
        Some("series"),
        "a panicking series goes on"
    );
    assert!(timer.cancel(&series).was_pending());
}

#[tokio::test(start_paused = true)]
async fn panics_without_a_handler_or_in_the_handler_do_not_stop_the_timer() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    timer
        .call_after(SEC, || panic!("nobody listens"), 0)
        .unwrap();
    timer.call_after(2 * SEC, report(&tx, "second"), 0).unwrap();
    assert_eq!(names(&mut rx, 1).await, ["second"]);
    timer.set_on_error(|_| panic!("the handler panics too"));
    timer.call_after(SEC, || panic!("again"), 0).unwrap();
    timer.call_after(2 * SEC, report(&tx, "third"), 0).unwrap();
    assert_eq!(names(&mut rx, 1).await, ["third"]);
}

#[tokio::test(start_paused = true)]
async fn apply_entry_runs_now_and_hands_panics_to_on_error() {
    let timer = Timer::new();
    let (err_tx, mut errors) = unbounded_channel();
    timer.set_on_error(move |panic| {
        let _ = err_tx.send(panic.message().to_owned());
    });
    let (tx, mut rx) = unbounded_channel();
    let start = Instant::now();
    timer
        .apply_entry(&Entry::new(report(&tx, "applied")))
        .await
        .unwrap();
    assert_eq!(
        rx.try_recv().unwrap(),
        ("applied", start),
        "ran before returning"
    );
    timer
        .apply_entry(&Entry::new(|| panic!("applied boom")))
        .await
        .unwrap();
    assert_eq!(errors.try_recv().unwrap(), "applied boom");
}

#[tokio::test(start_paused = true)]
async fn stop_lets_no_entry_fire_afterwards() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel();
    // Three entries due together are handed to their tasks in one go; the
    // first stops the timer, so the other two, already handed out, must not
    // run.
    let eta = Instant::now() + SEC;
    let stopper = timer.clone();
    let sender = tx.clone();
    timer
        .call_at(
            eta,
            move || {
                stopper.stop();
                let _ = sender.send(("stopper", Instant::now()));
            },
            0,
        )
        .unwrap();
    timer.call_at(eta, report(&tx, "handed-out-1"), 1).unwrap();
    timer.call_at(eta, report(&tx, "handed-out-2"), 2).unwrap();
    timer
        .call_after(5 * SEC, report(&tx, "pending"), 0)
        .unwrap();
    let series = timer
        .call_repeatedly(SEC, report(&tx, "series"), 9)
        .unwrap();
    drop(tx);
    assert_eq!(names(&mut rx, 1).await, ["stopper"]);
    assert_eq!(timer.cancel(&series), CancelResult::NotPending);
    assert_eq!(
        timer.enter_after(series.entry(), SEC, 0).unwrap_err(),
        TimerError::Stopped
    );
    drop(series);
    assert!(
        next(&mut rx).await.is_none(),
        "every entry was dropped without running"
    );
    assert!(timer.is_stopped() && timer.is_empty());
    assert_eq!(
        timer.call_after(SEC, || {}, 0).unwrap_err(),
        TimerError::Stopped
    );
    assert_eq!(
        timer.apply_entry(&Entry::new(|| {})).await.unwrap_err(),
        TimerError::Stopped
    );
    timer.stop();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_timer() {
    let timer = Timer::new();
    let (tx, mut rx) = unbounded_channel::<(&'static str, Instant)>();
    timer.call_after(SEC, report(&tx, "never"), 0).unwrap();
    drop(tx);
    let clone = timer.clone();
    drop(timer);
    assert_eq!(clone.len(), 1, "a clone keeps the timer");
    drop(clone);
    assert!(next(&mut rx).await.is_none(), "the entry was dropped unrun");
}

#[tokio::test(start_paused = true)]
async fn one_driver_task_serves_every_pending_entry() {
    let timer = Timer::new();
    for i in 0..10_000u64 {
        timer
            .call_after(Duration::from_millis(1 + i), || {}, 0)
            .unwrap();
    }
    tokio::task::yield_now().await;
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(alive, 1, "one driver, no task per pending entry");
    assert_eq!(timer.len(), 10_000);
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_with_an_error() {
    let timer = Timer::new();
    assert_eq!(
        timer.call_repeatedly(Duration::ZERO, || {}, 0).unwrap_err(),
        TimerError::ZeroInterval
    );
    assert!(matches!(
        timer.call_after(Duration::MAX, || {}, 0),
        Err(TimerError::TooLong(_))
    ));
    assert!(matches!(
        timer.call_repeatedly(Duration::MAX, || {}, 0),
        Err(TimerError::TooLong(_))
    ));
    let other = Timer::new();
    let series = other.call_repeatedly(SEC, || {}, 0).unwrap();
    assert_eq!(
        timer.enter_after(series.entry(), SEC, 0).unwrap_err(),
        TimerError::ForeignEntry
    );
    assert_eq!(
        timer.apply_entry(series.entry()).await.unwrap_err(),
        TimerError::ForeignEntry
    );
    assert_eq!(timer.cancel(&series), CancelResult::NotPending);
    assert_eq!(other.len(), 1, "the foreign series is untouched");
    assert!(timer.is_empty());
    let msg = TimerError::ZeroInterval.to_string();
    assert!(msg.starts_with(char::is_lowercase) && !msg.ends_with('.'));
}

#[test]
fn the_first_entry_outside_a_runtime_is_refused() {
    let timer = Timer::new();
    assert_eq!(
        timer.call_after(SEC, || {}, 0).unwrap_err(),
        TimerError::NoRuntime
    );
    assert!(timer.is_empty());
}

#[tokio::test(start_paused = true)]
async fn debug_shows_the_state() {
    let timer = Timer::new();
    timer.call_after(SEC, || {}, 0).unwrap();
    assert_eq!(format!("{timer:?}"), "Timer { len: 1, stopped: false }");
}

#[test]
fn handles_are_send_sync_clone_and_static() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Timer>();
    assert_send_sync::<TimerRef>();
    assert_send_sync::<Entry>();
    fn assert_send<T: Send>(_: &T) {}
    let timer = Timer::new();
    let entry = Entry::new(|| {});
    assert_send(&timer.apply_entry(&entry));
}

#[test]
fn a_timer_outlives_the_runtime_that_first_used_it() {
    let timer = Timer::new();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        timer
            .call_after(Duration::from_secs(3600), || {}, 0)
            .unwrap();
        tokio::task::yield_now().await;
    });
    // Its driver goes down with that runtime.
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    second.block_on(async {
        timer
            .call_after(
                Duration::from_secs(1),
                move || f.store(true, Ordering::SeqCst),
                0,
            )
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    assert!(
        fired.load(Ordering::SeqCst),
        "the entry fired on the second runtime"
    );
}
