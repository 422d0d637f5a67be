//! Killing jobs by id: KILL, TERM with grace, before start, unknown and
//! finished ids, self-kill.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greenpool::{job, Job, KillResult, KillSignal, Outcome, TaskPool, TerminateReason};
use support::{parked, pool, Calls, DropCounter, Gate};
use tokio::sync::oneshot;

#[tokio::test]
async fn kill_returns_after_the_job_exited_and_its_callback_ran() {
    for signal in [None, Some(KillSignal::Kill), Some(KillSignal::Other(31))] {
        let p = pool(2);
        let drops = DropCounter::default();
        let token = drops.token();
        let (started_tx, started_rx) = oneshot::channel();
        let called = Arc::new(AtomicBool::new(false));
        let c = called.clone();
        let h = p
            .apply_async(
                Job::new(move |_ctx| async move {
                    let _token = token;
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await
                })
                .callback(move |o| {
                    assert!(o.is_terminated());
                    c.store(true, Ordering::SeqCst);
                }),
            )
            .await
            .unwrap();
        started_rx.await.unwrap();
        assert_eq!(p.terminate_job(h.id(), signal).await, KillResult::Killed);
        assert!(called.load(Ordering::SeqCst), "callback ran before return");
        assert_eq!(drops.get(), 1, "the job's future was dropped");
        assert_eq!(p.job_count(), 0);
        assert_eq!(p.free(), 2);
        match h.await {
            Outcome::Terminated(t) => {
                assert_eq!(t.signal, signal);
                assert_eq!(t.reason, TerminateReason::Killed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.info().terminated, 1);
    }
}

#[tokio::test]
async fn a_job_killed_before_it_started_never_runs_and_gets_one_callback() {
    // On a current-thread runtime a spawned job does not run until this
    // task yields, so the kill lands first.
    let p = pool(1);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let calls = Calls::default();
    let (a, c) = (calls.clone(), calls.clone());
    let h = p
        .apply_async(
            job(async move { r.store(true, Ordering::SeqCst) })
                .accept_callback(move |_, _| a.push("accept"))
                .callback(move |o| c.push(format!("terminated={}", o.is_terminated()))),
        )
        .await
        .unwrap();
    assert_eq!(p.terminate_job(h.id(), None).await, KillResult::Killed);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(
        calls.take(),
        vec!["terminated=true"],
        "no accept, one result"
    );
    assert_eq!(p.free(), 1, "the slot came back");
    assert!(h.await.is_terminated());
}

#[tokio::test]
async fn unknown_and_finished_ids_are_reported_as_such() {
    let p = pool(1);
    let h = p.apply_async(job(async {})).await.unwrap();
    let id = h.id();
    h.await;
    assert_eq!(p.terminate_job(id, None).await, KillResult::AlreadyFinished);
    let other = pool(1);
    let far = other.apply_async(job(async {})).await.unwrap();
    for _ in 0..3 {
        other.apply_async(job(async {})).await.unwrap().await;
    }
    // An id this pool never handed out.
    let unknown = other.apply_async(job(async {})).await.unwrap().id();
    assert_eq!(p.terminate_job(unknown, None).await, KillResult::Unknown);
    // Ids that arrive as numbers, as from a remote control message.
    assert_eq!(
        p.terminate_job(greenpool::JobId::from_u64(id.as_u64()), None)
            .await,
        KillResult::AlreadyFinished
    );
    assert_eq!(
        p.terminate_job(greenpool::JobId::from_u64(10_000), None)
            .await,
        KillResult::Unknown
    );
    assert_eq!(
        p.terminate_job(greenpool::JobId::from_u64(0), None).await,
        KillResult::Unknown
    );
    far.await;
}

#[tokio::test]
async fn term_lets_a_cooperative_job_wind_down_with_its_own_outcome() {
    let p = pool(1);
    let (tx, rx) = oneshot::channel();
    let h = p
        .apply_async(Job::new(|ctx| async move {
            let _ = tx.send(());
            ctx.cancelled().await;
            "wound down"
        }))
        .await
        .unwrap();
    rx.await.unwrap();
    assert_eq!(
        p.terminate_job(h.id(), Some(KillSignal::Term)).await,
        KillResult::Exited
    );
    assert_eq!(h.await.completed(), Some("wound down"));
}

#[tokio::test(start_paused = true)]
async fn term_kills_after_the_grace_period_when_ignored() {
    let p = TaskPool::builder()
        .limit(1)
        .term_grace(Duration::from_secs(3))
        .build()
        .unwrap();
    p.start().unwrap();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let s = saw_cancel.clone();
    let (tx, rx) = oneshot::channel();
    let h = p
        .apply_async(Job::new(move |ctx| async move {
            let _ = tx.send(());
            ctx.cancelled().await;
            s.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await
        }))
        .await
        .unwrap();
    rx.await.unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(
        p.terminate_job(h.id(), Some(KillSignal::Int)).await,
        KillResult::Killed
    );
    assert!(saw_cancel.load(Ordering::SeqCst), "asked first");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "killed after grace"
    );
    let t = *h.await.termination().unwrap();
    assert_eq!(t.signal, Some(KillSignal::Int));
    assert_eq!(t.to_string(), "killed (SIGINT)");
}

#[tokio::test(start_paused = true)]
async fn the_grace_kill_happens_even_if_the_caller_goes_away() {
    let p = TaskPool::builder()
        .limit(1)
        .term_grace(Duration::from_secs(1))
        .build()
        .unwrap();
    p.start().unwrap();
    let gate = Gate::new();
    let (tx, rx) = oneshot::channel();
    let h = p.apply_async(parked(&gate, Some(tx))).await.unwrap();
    rx.await.unwrap();
    let mut call = tokio_test::task::spawn(p.terminate_job(h.id(), Some(KillSignal::Term)));
    tokio_test::assert_pending!(call.poll());
    drop(call);
    assert!(h.await.is_terminated());
}

#[tokio::test]
async fn a_job_that_kills_itself_gets_requested_and_ends_terminated() {
    let p = pool(1);
    let (id_tx, id_rx) = oneshot::channel();
    let (res_tx, res_rx) = oneshot::channel();
    let pc = p.clone();
    let h = p
        .apply_async(Job::new(move |ctx| async move {
            let r = pc.terminate_job(ctx.id(), None).await;
            let _ = res_tx.send(r);
            let _ = id_tx.send(());
            tokio::task::yield_now().await;
            unreachable!("killed at the await above")
        }))
        .await
        .unwrap();
    assert_eq!(res_rx.await.unwrap(), KillResult::Requested);
    id_rx.await.unwrap();
    let out: Outcome<()> = h.await;
    assert!(out.is_terminated());
}

#[tokio::test]
async fn the_handle_can_kill_its_job() {
    let p = pool(1);
    let gate = Gate::new();
    let (tx, rx) = oneshot::channel();
    let h = p.apply_async(parked(&gate, Some(tx))).await.unwrap();
    rx.await.unwrap();
    assert_eq!(h.terminate(None).await, KillResult::Killed);
    assert!(h.is_finished());
    assert!(h.await.is_terminated());
}

#[test]
fn kill_signals_map_to_and_from_numbers() {
    for (n, s) in [
        (9, KillSignal::Kill),
        (15, KillSignal::Term),
        (2, KillSignal::Int),
    ] {
        assert_eq!(KillSignal::from(n), s);
        assert_eq!(s.number(), n);
    }
    assert_eq!(KillSignal::from(1), KillSignal::Other(1));
    assert!(KillSignal::Term.is_graceful() && !KillSignal::Kill.is_graceful());
}

/// Jobs that outlive many turns of the job map's rings keep their places,
/// and the newer jobs that come to those places are kept aside: every
/// parked job, old or new, is still found and killed by id, and the map
/// ends empty.
#[tokio::test]
async fn kills_find_jobs_whose_place_an_older_job_holds() {
    let p = pool(100_000);
    let gate = Gate::new();
    let drops = DropCounter::default();
    let mut parked_ids = Vec::new();
    for _ in 0..3 {
        // Parked jobs, then enough short ones (a few alive at a time, so
        // that the rings need not grow) to wind every ring round several
        // times; the next parked ones land on taken places.
        for _ in 0..500 {
            let token = drops.token();
            let gate = gate.clone();
            let h = p
                .apply_async(job(async move {
                    let _token = token;
                    gate.wait().await;
                }))
                .await
                .unwrap();
            parked_ids.push(h.id());
        }
        for _ in 0..20_000 / 16 {
            let mut quick = Vec::new();
            for _ in 0..16 {
                quick.push(p.apply_async(job(async {})).await.unwrap());
            }
            for h in quick {
                assert!(h.await.is_completed());
            }
        }
    }
    assert_eq!(p.job_count(), 1_500);
    for id in &parked_ids {
        assert_eq!(
            p.terminate_job(*id, Some(KillSignal::Kill)).await,
            KillResult::Killed,
            "{id}"
        );
    }
    assert_eq!(drops.get(), 1_500);
    assert_eq!(p.job_count(), 0);
    assert_eq!(p.info().terminated, 1_500);
    assert_eq!(p.free(), 100_000);
}
