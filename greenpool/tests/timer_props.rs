//! Random insert / cancel / advance / clear sequences against a simple model
//! of the timer, on a paused clock.
//!
//! The model keeps, per entry, its eta and whether it was cancelled (a
//! `Cancelled` answer or a `clear`). Checked throughout and at the end:
//!
//! - every entry that was not cancelled fires exactly once, at or after its
//!   eta; a cancelled entry never fires;
//! - `cancel` answers `Cancelled` only for an entry that has not fired, and
//!   `NotPending` only for one already cancelled or already due;
//! - once the timer has caught up with the clock ("settled"), exactly the
//!   due entries have fired, `len()` counts the rest, and `clear()` returns
//!   that count.
//!
//! Settling is observable without sleeps: a canary entered at `now` with the
//! largest priority sorts after every due entry, and on a current-thread
//! runtime entries run in the order they fire, so when the canary has run,
//! every due entry has run.

// Helpers outside #[test] fns are not covered by clippy.toml's test allowance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenpool::{CancelResult, Timer, TimerRef};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::{self, Instant};

#[derive(Debug, Clone)]
enum Op {
    /// Enter an entry `ms` after (or, if `past`, before) now.
    Insert { ms: u64, past: bool, priority: i32 },
    /// Cancel the entry with this index (modulo the number entered).
    Cancel(usize),
    /// Advance the paused clock; settle afterwards or not.
    Advance { ms: u64, settle: bool },
    /// Settle, then clear the timer.
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..40u64, prop::bool::weighted(0.15), -2..=2i32)
            .prop_map(|(ms, past, priority)| Op::Insert { ms, past, priority }),
        3 => any::<usize>().prop_map(Op::Cancel),
        3 => (0..30u64, any::<bool>()).prop_map(|(ms, settle)| Op::Advance { ms, settle }),
        1 => Just(Op::Clear),
    ]
}

/// One entry as the model sees it.
struct Model {
    eta: Instant,
    priority: i32,
    /// Number of `.await`s the test made before entering it.
    stretch: usize,
    cancelled: bool,
    tref: TimerRef,
}

/// Which entries ran, in order, and when.
type Log = Arc<Mutex<Vec<(usize, Instant)>>>;

/// Waits until every entry due now has run (see the module docs).
async fn settle(timer: &Timer) {
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    timer
        .call_at(
            Instant::now(),
            move || {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            },
            i32::MAX,
        )
        .unwrap();
    time::timeout(Duration::from_secs(3600), rx)
        .await
        .expect("the canary fires without the clock moving")
        .unwrap();
}

fn runs_of(log: &Log, id: usize) -> Vec<Instant> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| *i == id)
        .map(|(_, at)| *at)
        .collect()
}

/// Exact checks once the timer has caught up with the clock.
fn check_settled(timer: &Timer, model: &[Model], log: &Log) -> Result<(), TestCaseError> {
    let now = Instant::now();
    let mut waiting = 0;
    for (id, m) in model.iter().enumerate() {
        let runs = runs_of(log, id);
        if m.cancelled {
            prop_assert!(runs.is_empty(), "cancelled entry {id} ran");
        } else if m.eta <= now {
            prop_assert_eq!(runs.len(), 1, "due entry {} ran {} times", id, runs.len());
        } else {
            prop_assert!(runs.is_empty(), "entry {id} ran before its eta");
            waiting += 1;
        }
        for at in runs {
            prop_assert!(at >= m.eta, "entry {id} ran before its eta");
        }
    }
    prop_assert_eq!(timer.len(), waiting);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let timer = Timer::new();
        let log: Log = Arc::default();
        let mut model: Vec<Model> = Vec::new();
        // Whether nothing ran since the last settle, so the state is exact.
        let mut settled = true;
        let mut stretch = 0;
        for op in ops {
            match op {
                Op::Insert { ms, past, priority } => {
                    let now = Instant::now();
                    let d = Duration::from_millis(ms);
                    let eta = if past { now - d } else { now + d };
                    let id = model.len();
                    let l = Arc::clone(&log);
                    let tref = timer
                        .call_at(
                            eta,
                            move || l.lock().unwrap().push((id, Instant::now())),
                            priority,
                        )
                        .unwrap();
                    model.push(Model {
                        eta,
                        priority,
                        stretch,
                        cancelled: false,
                        tref,
                    });
                }
                Op::Cancel(i) if !model.is_empty() => {
                    let id = i % model.len();
                    let m = &mut model[id];
                    let answer = timer.cancel(&m.tref);
                    let ran = !runs_of(&log, id).is_empty();
                    match answer {
                        CancelResult::Cancelled => {
                            prop_assert!(!m.cancelled, "entry {id} cancelled twice");
                            prop_assert!(!ran, "entry {id} cancelled after it ran");
                            m.cancelled = true;
                        }
                        CancelResult::NotPending => {
                            let due = m.eta <= Instant::now();
                            prop_assert!(m.cancelled || due, "pending entry {id} not cancelled");
                            if settled && !m.cancelled {
                                prop_assert!(ran, "settled: a due entry {id} has run");
                            }
                        }
                    }
                }
                Op::Cancel(_) => {}
                Op::Advance { ms, settle: s } => {
                    stretch += 1;
                    time::advance(Duration::from_millis(ms)).await;
                    settled = s;
                    if s {
                        settle(&timer).await;
                        check_settled(&timer, &model, &log)?;
                    }
                }
                Op::Clear => {
                    stretch += 1;
                    settle(&timer).await;
                    check_settled(&timer, &model, &log)?;
                    let expected = timer.len();
                    prop_assert_eq!(timer.clear(), expected);
                    let now = Instant::now();
                    for m in model.iter_mut().filter(|m| m.eta > now) {
                        m.cancelled = true;
                    }
                    settled = true;
                }
            }
        }
        // Run everything that is left, then check the whole history.
        time::advance(Duration::from_secs(60)).await;
        settle(&timer).await;
        check_settled(&timer, &model, &log)?;
        prop_assert!(timer.is_empty());
        let log = log.lock().unwrap();
        let mut ids: Vec<usize> = log.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), log.len(), "no entry ran twice");
        // Entries entered in one stretch without an `.await` were all in the
        // queue together until they fired, so they ran in firing order: by
        // eta, then priority, then insertion.
        let mut last_key: std::collections::HashMap<usize, (Instant, i32, usize)> =
            std::collections::HashMap::new();
        for (id, _) in log.iter() {
            let m = &model[*id];
            let key = (m.eta, m.priority, *id);
            if let Some(prev) = last_key.insert(m.stretch, key) {
                prop_assert!(prev < key, "{:?} ran before {:?}", prev, key);
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_pending_entry_fires_once_at_or_after_its_eta_and_never_after_cancel(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(ops)?;
    }
}
