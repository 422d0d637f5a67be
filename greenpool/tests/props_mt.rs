//! Random operation sequences on multi-thread runtimes (2 and 4 workers),
//! with everything that races: blocking and waiting applies, kills by
//! KILL and by TERM with a grace (jobs that honour their token and jobs
//! that ignore it), hard and soft time limits, panicking jobs and
//! panicking callbacks, resizes, `close`, and at the end `stop` or
//! `terminate`. Every job captures state whose `Drop` is slow.
//!
//! Nothing here waits on time to synchronise; the time limits and the grace
//! are short so that cases end quickly, and no assertion depends on how
//! long anything took. Checked:
//!
//! * exactly one callback per admitted job, none for a refused one;
//! * a job's state is dropped before its callback runs (so before its slot
//!   is freed), before a `terminate_job` that found it returns, and before
//!   `stop`/`terminate` return;
//! * every `terminate_job` returns, and what it says agrees with the
//!   outcome (`Killed` ⇒ terminated, `Exited` ⇒ not);
//! * at the end: an empty job map, no slot held, and counters that add up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenpool::{Job, JobId, KillResult, KillSignal, Outcome, TaskPool, TerminateReason};
use proptest::prelude::*;
use support::Gate;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Parks until released; with `honours_term`, also ends when its token
    /// is cancelled.
    Parked {
        honours_term: bool,
    },
    Quick,
    Panics,
    /// Parks for ever under a hard (and maybe soft) time limit.
    Limited {
        soft: bool,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Apply {
        kind: Kind,
        callback_panics: bool,
    },
    Grow(u8),
    Shrink(u8),
    /// Kill the n-th applied job with a signal (0 none, 1 KILL, 2 TERM).
    Kill(usize, u8),
    Release(usize),
    Close,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => any::<bool>().prop_map(|honours_term| Kind::Parked { honours_term }),
        3 => Just(Kind::Quick),
        1 => Just(Kind::Panics),
        1 => any::<bool>().prop_map(|soft| Kind::Limited { soft }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (kind(), prop::bool::weighted(0.2))
            .prop_map(|(kind, callback_panics)| Op::Apply { kind, callback_panics }),
        2 => (0u8..3).prop_map(Op::Grow),
        2 => (0u8..3).prop_map(Op::Shrink),
        3 => (any::<usize>(), 0u8..3).prop_map(|(i, s)| Op::Kill(i, s)),
        3 => any::<usize>().prop_map(Op::Release),
        1 => Just(Op::Close),
    ]
}

/// State a job captures; its drop is slow and recorded.
struct Held {
    dropped: Arc<AtomicBool>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for _ in 0..50 {
            std::thread::yield_now();
        }
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// What one applied job went through.
#[derive(Default)]
struct Track {
    dropped: Arc<AtomicBool>,
    /// Outcomes seen by the callback, each with "state dropped by then".
    calls: Mutex<Vec<(&'static str, bool)>>,
    id: Mutex<Option<JobId>>,
    /// Some(true) admitted, Some(false) refused.
    admitted: Mutex<Option<bool>>,
}

fn name<T>(o: &Outcome<T>) -> &'static str {
    match o {
        Outcome::Completed(_) => "completed",
        Outcome::Panicked(_) => "panicked",
        Outcome::Terminated(t) if t.reason == TerminateReason::TimeLimit => "time limit",
        Outcome::Terminated(_) => "terminated",
    }
}

fn make_job(kind: Kind, callback_panics: bool, gate: Gate, track: &Arc<Track>) -> Job<()> {
    let held = Held {
        dropped: track.dropped.clone(),
    };
    let t = track.clone();
    let job = Job::new(move |ctx| async move {
        let _held = held;
        match kind {
            Kind::Parked { honours_term: true } => {
                tokio::select! {
                    () = gate.wait() => {}
                    () = ctx.cancelled() => {}
                }
            }
            Kind::Parked {
                honours_term: false,
            } => gate.wait().await,
            Kind::Quick => {}
            Kind::Panics => panic!("this job panics"),
            Kind::Limited { .. } => std::future::pending::<()>().await,
        }
    })
    .callback(move |o: &Outcome<()>| {
        t.calls
            .lock()
            .unwrap()
            .push((name(o), t.dropped.load(Ordering::SeqCst)));
        if callback_panics {
            panic!("this callback panics");
        }
    });
    match kind {
        Kind::Limited { soft: true } => job
            .soft_timeout(Duration::from_millis(1))
            .timeout(Duration::from_millis(3))
            .boxed(),
        Kind::Limited { soft: false } => job.timeout(Duration::from_millis(2)).boxed(),
        _ => job.boxed(),
    }
}

async fn run(limit: usize, ops: Vec<Op>, terminate_at_end: bool) -> Result<(), TestCaseError> {
    let pool = TaskPool::builder()
        .limit(limit as i64)
        .term_grace(Duration::from_millis(2))
        .build()
        .unwrap();
    pool.start().unwrap();
    let mut tracks: Vec<(Kind, Arc<Track>, Gate)> = Vec::new();
    let mut appliers = Vec::new();
    let mut killers = Vec::new();
    for op in ops {
        match op {
            Op::Apply {
                kind,
                callback_panics,
            } => {
                let track = Arc::new(Track::default());
                let gate = Gate::new();
                let job = make_job(kind, callback_panics, gate.clone(), &track);
                tracks.push((kind, track.clone(), gate));
                let p = pool.clone();
                appliers.push(tokio::spawn(async move {
                    let r = p.apply_async(job).await;
                    if let Ok(h) = &r {
                        *track.id.lock().unwrap() = Some(h.id());
                    }
                    *track.admitted.lock().unwrap() = Some(r.is_ok());
                }));
            }
            Op::Grow(n) => {
                pool.grow(n as usize).unwrap();
            }
            Op::Shrink(n) => {
                let _ = pool.shrink(n as usize);
            }
            Op::Kill(..) | Op::Release(_) if tracks.is_empty() => {}
            Op::Kill(i, s) => {
                let (_, track, _) = &tracks[i % tracks.len()];
                let Some(id) = *track.id.lock().unwrap() else {
                    continue;
                };
                let signal = match s {
                    0 => None,
                    1 => Some(KillSignal::Kill),
                    _ => Some(KillSignal::Term),
                };
                let (p, track) = (pool.clone(), track.clone());
                killers.push(tokio::spawn(async move {
                    let r = p.terminate_job(id, signal).await;
                    // Whatever it found, the job was gone when it returned.
                    let gone = track.dropped.load(Ordering::SeqCst)
                        && !track.calls.lock().unwrap().is_empty();
                    (track, r, gone)
                }));
            }
            Op::Release(i) => tracks[i % tracks.len()].2.open(),
            Op::Close => pool.close(),
        }
        tokio::task::yield_now().await;
    }

    // The end: `terminate`, or release everything and `stop`.
    if terminate_at_end {
        pool.terminate().await.unwrap();
    } else {
        for (_, _, gate) in &tracks {
            gate.open();
        }
        if pool.limit() == 0 {
            pool.grow(1).unwrap();
        }
        pool.stop().await.unwrap();
    }
    // Everything admitted is gone by now.
    for (i, (_, track, _)) in tracks.iter().enumerate() {
        if track.id.lock().unwrap().is_some() {
            prop_assert!(
                track.dropped.load(Ordering::SeqCst),
                "job {}: state alive after stop/terminate returned",
                i
            );
            prop_assert_eq!(track.calls.lock().unwrap().len(), 1, "job {}", i);
        }
    }
    for a in appliers {
        a.await.unwrap();
    }
    for k in killers {
        let (track, r, gone) = tokio::time::timeout(Duration::from_secs(60), k)
            .await
            .map_err(|_| TestCaseError::fail("a terminate_job never returned"))?
            .unwrap();
        let calls = track.calls.lock().unwrap().clone();
        match r {
            KillResult::Killed => {
                prop_assert!(gone, "Killed before the job was gone");
                prop_assert_eq!(calls.len(), 1);
                prop_assert!(matches!(calls[0].0, "terminated"), "{:?}", calls);
            }
            KillResult::Exited => {
                prop_assert!(gone, "Exited before the job was gone");
                prop_assert!(calls[0].0 != "terminated", "{:?}", calls);
            }
            KillResult::AlreadyFinished => prop_assert!(gone || calls.is_empty()),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
    let mut admitted = 0u64;
    for (i, (kind, track, _)) in tracks.iter().enumerate() {
        let calls = track.calls.lock().unwrap().clone();
        let was_admitted = *track.admitted.lock().unwrap();
        prop_assert!(was_admitted.is_some(), "job {}: apply never returned", i);
        if was_admitted == Some(false) {
            prop_assert!(calls.is_empty(), "job {}: refused but called", i);
            prop_assert!(track.dropped.load(Ordering::SeqCst));
            continue;
        }
        admitted += 1;
        prop_assert_eq!(calls.len(), 1, "job {} ({:?}): {:?}", i, kind, calls);
        let (outcome, dropped_first) = calls[0];
        prop_assert!(dropped_first, "job {}: callback before the state's drop", i);
        let allowed: &[&str] = match kind {
            Kind::Parked { .. } | Kind::Quick => &["completed", "terminated"],
            Kind::Panics => &["panicked", "terminated"],
            Kind::Limited { .. } => &["time limit", "terminated"],
        };
        prop_assert!(
            allowed.contains(&outcome),
            "job {} ({:?}): {}",
            i,
            kind,
            outcome
        );
    }
    let info = pool.info();
    prop_assert_eq!(pool.job_count(), 0);
    prop_assert_eq!(pool.running(), 0);
    prop_assert_eq!(info.applied, admitted);
    prop_assert_eq!(info.completed + info.panicked + info.terminated, admitted);
    Ok(())
}

fn case(workers: usize, limit: usize, ops: Vec<Op>, terminate: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(limit, ops, terminate))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn two_workers(limit in 0usize..6, ops in prop::collection::vec(op(), 1..40), terminate: bool) {
        case(2, limit, ops, terminate)?;
    }

    #[test]
    fn four_workers(limit in 0usize..6, ops in prop::collection::vec(op(), 1..40), terminate: bool) {
        case(4, limit, ops, terminate)?;
    }
}

/// A TERM on a job that ignores it, next to a time limit, then a stop.
#[test]
fn a_fixed_mixed_sequence() {
    let ops = vec![
        Op::Apply {
            kind: Kind::Parked {
                honours_term: false,
            },
            callback_panics: true,
        },
        Op::Apply {
            kind: Kind::Limited { soft: true },
            callback_panics: false,
        },
        Op::Kill(0, 2),
        Op::Apply {
            kind: Kind::Quick,
            callback_panics: false,
        },
        Op::Release(2),
        Op::Close,
    ];
    case(2, 2, ops, false).unwrap();
}
