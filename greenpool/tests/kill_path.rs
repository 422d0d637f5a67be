//! The kill path's guarantees, each pinned by a test that failed before its
//! fix: the job is gone before anyone hears it ended, a killer never hears
//! "already finished" before the callback ran, a job's end wakes only its
//! own killers, a job killed before it started never runs, and every
//! `terminate_job` returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use greenpool::signals::{self, ConnectOptions};
use greenpool::{Job, KillResult, KillSignal, Outcome, TaskPool, TerminateReason};
use support::{pool, Gate};
use tokio::sync::oneshot;

/// What the world looked like when a job's captured state was dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct AtDrop {
    callback_ran: bool,
    running: usize,
    killer_returned: bool,
}

/// Flags the test flips as things happen, and the snapshot taken at drop.
#[derive(Default)]
struct Watch {
    callback_ran: AtomicBool,
    killer_returned: AtomicBool,
    at_drop: Mutex<Option<AtDrop>>,
}

/// State captured by a job: records `Watch` when dropped.
struct State {
    watch: Arc<Watch>,
    pool: TaskPool,
}

impl Drop for State {
    fn drop(&mut self) {
        let w = &self.watch;
        *w.at_drop.lock().unwrap() = Some(AtDrop {
            callback_ran: w.callback_ran.load(Ordering::SeqCst),
            running: self.pool.running(),
            killer_returned: w.killer_returned.load(Ordering::SeqCst),
        });
    }
}

/// A parked job holding a `State`, with a callback that flips the watch.
async fn apply_watched(p: &TaskPool, watch: &Arc<Watch>) -> greenpool::JobHandle<()> {
    let state = State {
        watch: watch.clone(),
        pool: p.clone(),
    };
    let w = watch.clone();
    let (tx, rx) = oneshot::channel();
    let h = p
        .apply_async(
            Job::new(move |_ctx| async move {
                let _state = state;
                let _ = tx.send(());
                std::future::pending::<()>().await
            })
            .callback(move |_| w.callback_ran.store(true, Ordering::SeqCst)),
        )
        .await
        .unwrap();
    rx.await.unwrap();
    h
}

#[tokio::test]
async fn a_killed_jobs_state_is_dropped_before_its_callback_its_slot_and_the_killers_return() {
    let p = pool(1);
    let watch = Arc::new(Watch::default());
    let h = apply_watched(&p, &watch).await;
    let r = p.terminate_job(h.id(), Some(KillSignal::Kill)).await;
    watch.killer_returned.store(true, Ordering::SeqCst);
    assert_eq!(r, KillResult::Killed);
    let at_drop = watch
        .at_drop
        .lock()
        .unwrap()
        .expect("the state was dropped");
    assert_eq!(
        at_drop,
        AtDrop {
            callback_ran: false,
            running: 1,
            killer_returned: false
        },
        "dropped before the callback, the slot's release and the killer's return"
    );
    assert!(h.await.is_terminated());
}

#[tokio::test]
async fn terminate_returns_after_every_killed_jobs_state_is_dropped() {
    let p = pool(1);
    let watch = Arc::new(Watch::default());
    let h = apply_watched(&p, &watch).await;
    p.terminate().await.unwrap();
    watch.killer_returned.store(true, Ordering::SeqCst);
    let at_drop = watch
        .at_drop
        .lock()
        .unwrap()
        .expect("the state was dropped");
    assert!(!at_drop.callback_ran && at_drop.running == 1 && !at_drop.killer_returned);
    assert!(h.await.is_terminated());
}

#[tokio::test]
async fn a_job_aborted_through_its_handle_is_dropped_before_its_callback() {
    let p = pool(1);
    let watch = Arc::new(Watch::default());
    let h = apply_watched(&p, &watch).await;
    h.abort();
    let outcome = (&mut { h }).await;
    let at_drop = watch
        .at_drop
        .lock()
        .unwrap()
        .expect("the state was dropped");
    assert!(!at_drop.callback_ran && at_drop.running == 1);
    match outcome {
        Outcome::Terminated(t) => {
            assert_eq!(t.signal, Some(KillSignal::Kill));
            assert_eq!(t.reason, TerminateReason::Killed);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killer_never_hears_already_finished_before_the_callback_ran() {
    let p = pool(1);
    let (in_cb_tx, in_cb_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let h = p
        .apply_async(Job::new(|_ctx| async { 1 }).callback(move |_| {
            let _ = in_cb_tx.send(());
            // Blocks this worker until the test has asked for the kill.
            let _ = go_rx.recv();
            d.store(true, Ordering::SeqCst);
        }))
        .await
        .unwrap();
    in_cb_rx.await.unwrap();
    // The callback is running on the other worker: the kill is requested
    // on this first poll.
    let mut kill = Box::pin(p.terminate_job(h.id(), Some(KillSignal::Kill)));
    let first = futures::poll!(kill.as_mut());
    go_tx.send(()).unwrap();
    assert!(
        first.is_pending(),
        "answered {first:?} while the callback was still running"
    );
    assert_eq!(kill.await, KillResult::Exited);
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(h.await.completed(), Some(1));
}

/// Counts the polls of a future.
struct Polls<F> {
    fut: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Polls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.fut.as_mut().poll(cx)
    }
}

#[tokio::test]
async fn a_jobs_end_wakes_only_its_own_killers() {
    let p = TaskPool::builder()
        .limit(200)
        .term_grace(Duration::from_secs(3600))
        .build()
        .unwrap();
    p.start().unwrap();
    // A job that ignores TERM: its killer waits out the grace.
    let stubborn = p.spawn(std::future::pending::<()>()).await.unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    let killer = tokio::spawn(Polls {
        fut: Box::pin({
            let p = p.clone();
            let id = stubborn.id();
            async move { p.terminate_job(id, Some(KillSignal::Term)).await }
        }),
        polls: polls.clone(),
    });
    tokio::task::yield_now().await;
    let before = polls.load(Ordering::SeqCst);
    assert!(before >= 1, "the killer ran");
    let gate = Gate::new();
    let mut others = Vec::new();
    for _ in 0..100 {
        let g = gate.clone();
        others.push(p.spawn(async move { g.wait().await }).await.unwrap());
    }
    gate.open();
    for h in others {
        h.await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        polls.load(Ordering::SeqCst),
        before,
        "100 other jobs ended and woke this killer"
    );
    stubborn.abort();
    assert_eq!(killer.await.unwrap(), KillResult::Killed);
}

#[tokio::test]
async fn a_job_term_killed_before_it_started_never_runs() {
    // The kill lands between admission and the job's first poll, from the
    // apply signal's receiver, and is graceful: nothing aborts the task, so
    // only the start looking at the kill mark keeps it from running.
    let p = pool(1);
    let ran = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicBool::new(false));
    let killer = {
        let p = p.clone();
        signals::APPLY.connect_with(ConnectOptions::new().sender(p.id()), move |_, args| {
            let r = p
                .terminate_job(args.job_id, Some(KillSignal::Term))
                .now_or_never();
            assert_eq!(r, None, "the kill waits for the job");
        })
    };
    let (r, a) = (ran.clone(), accepted.clone());
    let h = p
        .apply_async(
            Job::new(move |_ctx| async move { r.store(true, Ordering::SeqCst) })
                .accept_callback(move |_, _| a.store(true, Ordering::SeqCst)),
        )
        .await
        .unwrap();
    signals::APPLY.disconnect(&killer);
    let outcome = h.await;
    assert!(!ran.load(Ordering::SeqCst), "the target ran");
    assert!(!accepted.load(Ordering::SeqCst), "the accept callback ran");
    assert_eq!(
        outcome.termination().map(|t| t.signal),
        Some(Some(KillSignal::Term))
    );
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_killed_before_they_started_never_run_on_a_multi_thread_runtime() {
    let p = pool(64);
    let ran = Arc::new(AtomicUsize::new(0));
    let killer = {
        let p = p.clone();
        signals::APPLY.connect_with(ConnectOptions::new().sender(p.id()), move |_, args| {
            let _ = p
                .terminate_job(args.job_id, Some(KillSignal::Kill))
                .now_or_never();
        })
    };
    let mut handles = Vec::new();
    for _ in 0..500 {
        let (r, a) = (ran.clone(), ran.clone());
        handles.push(
            p.apply_async(
                Job::new(move |_ctx| async move {
                    r.fetch_add(1, Ordering::SeqCst);
                })
                .accept_callback(move |_, _| {
                    a.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .await
            .unwrap(),
        );
    }
    signals::APPLY.disconnect(&killer);
    for h in handles {
        assert!(h.await.is_terminated());
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_killer_returns_when_close_races_the_apply() {
    // A killer that finds a job which a racing `close` then refuses must
    // still return. The interleaving is also walked exhaustively by the
    // loom model `loom_apply_races_close`.
    for _ in 0..200 {
        let p = pool(4);
        let killers = Arc::new(Mutex::new(Vec::new()));
        let key = {
            let (p, killers) = (p.clone(), killers.clone());
            signals::APPLY.connect_with(ConnectOptions::new().sender(p.id()), move |_, args| {
                let (p2, id) = (p.clone(), args.job_id);
                killers.lock().unwrap().push(tokio::spawn(async move {
                    p2.terminate_job(id, None).await
                }));
            })
        };
        let appliers: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.spawn(std::future::pending::<()>()).await.is_ok() })
            })
            .collect();
        p.close();
        for a in appliers {
            a.await.unwrap();
        }
        let ks = std::mem::take(&mut *killers.lock().unwrap());
        for k in ks {
            let r = tokio::time::timeout(Duration::from_secs(30), k)
                .await
                .expect("a killer hung")
                .unwrap();
            assert!(
                matches!(r, KillResult::Killed | KillResult::AlreadyFinished),
                "{r:?}"
            );
        }
        signals::APPLY.disconnect(&key);
        p.terminate().await.unwrap();
    }
}

/// A handle holds no reference to its pool: with every pool handle
/// dropped, a running job still keeps the pool alive, so its handle still
/// kills it; once the job ended and the pool is gone, the handle hears
/// "already finished".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_kills_after_the_pool_handles_are_dropped() {
    let p = pool(2);
    let parked = p.spawn(std::future::pending::<()>()).await.unwrap();
    let done = p.spawn(async { 7 }).await.unwrap();
    drop(p);
    assert_eq!(
        parked.terminate(Some(KillSignal::Kill)).await,
        KillResult::Killed
    );
    // (`is_finished` may lag the kill by the task's own completion on a
    // multi-thread runtime; awaiting the handle waits for it.)
    assert!(matches!(parked.await, Outcome::Terminated(_)));
    let mut done = done;
    assert_eq!((&mut done).await.completed(), Some(7));
    // Both jobs ended, so nothing keeps the pool: the handle cannot find
    // it, and the answer is the one the pool would have given.
    assert_eq!(done.terminate(None).await, KillResult::AlreadyFinished);
    done.abort();
}
