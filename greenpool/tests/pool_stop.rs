//! Stopping and terminating: waits, signals around the wait, kills, and the
//! refusal to stop from inside a job.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use greenpool::{job, signals, ApplyError, Job, PoolState, StopError, TaskPool, TerminateReason};
use support::{parked, pool, Calls, Gate};
use tokio::sync::oneshot;
use tokio_test::{assert_pending, assert_ready, task};

#[tokio::test]
async fn stop_waits_for_every_job_between_the_two_signals() {
    let p = pool(2);
    let calls = Calls::default();
    let only_p = || signals::ConnectOptions::new().sender(p.id());
    let (c1, c2) = (calls.clone(), calls.clone());
    let k1 = signals::POOL_PRE_SHUTDOWN.connect_with(only_p(), move |_, _| c1.push("pre"));
    let k2 = signals::POOL_POST_SHUTDOWN.connect_with(only_p(), move |_, _| c2.push("post"));
    let gate = Gate::new();
    for i in 0..3 {
        let c = calls.clone();
        // The third waits for a slot inside apply, so apply it from a task.
        let p2 = p.clone();
        let g = gate.clone();
        let job = parked(&g, None).callback(move |_| c.push(format!("job{i}")));
        if i < 2 {
            drop(p.apply_async(job).await.unwrap());
        } else {
            assert!(p2.try_apply_async(job).unwrap_err().is_full());
        }
    }
    let mut stop = task::spawn(p.stop());
    assert_pending!(stop.poll());
    assert_eq!(calls.take(), vec!["pre"]);
    assert_eq!(p.state(), PoolState::Close, "closed while it waits");
    gate.open();
    // Let the jobs run to their end.
    while p.job_count() > 0 {
        tokio::task::yield_now().await;
    }
    assert_ready!(stop.poll()).unwrap();
    let mut seen = calls.take();
    assert_eq!(seen.pop().as_deref(), Some("post"));
    seen.sort();
    assert_eq!(seen, vec!["job0", "job1"]);
    assert_eq!(p.state(), PoolState::Terminate);
    signals::POOL_PRE_SHUTDOWN.disconnect(&k1);
    signals::POOL_POST_SHUTDOWN.disconnect(&k2);
}

#[tokio::test]
async fn close_gives_waiting_applies_their_jobs_back() {
    let p = pool(0);
    let mut waiting = task::spawn(p.apply_async(job(async { 1 })));
    assert_pending!(waiting.poll());
    p.close();
    let err = assert_ready!(waiting.poll()).unwrap_err();
    assert!(matches!(
        err,
        ApplyError::NotRunning {
            state: PoolState::Close,
            ..
        }
    ));
    p.stop().await.unwrap();
}

#[tokio::test]
async fn stop_from_inside_a_job_is_an_error_not_a_deadlock() {
    let p = pool(1);
    let pc = p.clone();
    let (tx, rx) = oneshot::channel();
    let h = p
        .apply_async(Job::new(move |ctx| async move {
            let r = pc.stop().await;
            let t = pc.terminate().await;
            let _ = tx.send((ctx.id(), r, t));
        }))
        .await
        .unwrap();
    let (id, r, t) = rx.await.unwrap();
    assert_eq!(r, Err(StopError::FromOwnJob(id)));
    assert_eq!(t, Err(StopError::FromOwnJob(id)));
    assert!(r.unwrap_err().to_string().contains("outside the pool"));
    assert!(h.await.is_completed());
    assert!(p.active(), "the refused stop changed nothing");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn terminate_kills_running_and_unstarted_jobs_each_once() {
    let p = pool(8);
    let gate = Gate::new();
    let callbacks = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = oneshot::channel();
    let mut handles = Vec::new();
    let c = callbacks.clone();
    handles.push(
        p.apply_async(parked(&gate, Some(tx)).callback(move |o| {
            assert!(o.is_terminated());
            c.fetch_add(1, Ordering::SeqCst);
        }))
        .await
        .unwrap(),
    );
    rx.await.unwrap();
    // Five more that have not had a chance to run yet.
    for _ in 0..5 {
        let c = callbacks.clone();
        handles.push(
            p.apply_async(parked(&gate, None).callback(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            }))
            .await
            .unwrap(),
        );
    }
    p.terminate().await.unwrap();
    assert_eq!(callbacks.load(Ordering::SeqCst), 6);
    assert_eq!(p.job_count(), 0);
    assert_eq!(p.state(), PoolState::Terminate);
    for h in handles {
        let t = *h.await.termination().unwrap();
        assert_eq!(t.reason, TerminateReason::PoolTerminated);
    }
    let err = p.apply_async(job(async {})).await.unwrap_err();
    assert!(matches!(
        err,
        ApplyError::NotRunning {
            state: PoolState::Terminate,
            ..
        }
    ));
}

#[tokio::test]
async fn apply_after_stop_is_refused_and_the_job_returned() {
    let p = pool(1);
    p.stop().await.unwrap();
    let err = p.try_apply_async(job(async { 3 })).unwrap_err();
    let job = err.into_job();
    let q = TaskPool::builder().limit(1).build().unwrap();
    q.start().unwrap();
    assert_eq!(q.apply_async(job).await.unwrap().await.completed(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_racing_applies_admits_nothing_after_it() {
    for _ in 0..50 {
        let p = pool(64);
        let admitted_after = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let appliers: Vec<_> = (0..2)
            .map(|_| {
                let p = p.clone();
                let closed = closed.clone();
                let after = admitted_after.clone();
                tokio::spawn(async move {
                    let mut ok = 0;
                    for _ in 0..200 {
                        let was_closed = closed.load(Ordering::SeqCst);
                        match p.apply_async(job(async {})).await {
                            Ok(_) => {
                                ok += 1;
                                if was_closed {
                                    after.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Err(e) => assert!(!e.is_full()),
                        }
                    }
                    ok
                })
            })
            .collect();
        tokio::task::yield_now().await;
        p.close();
        closed.store(true, Ordering::SeqCst);
        let mut total = 0;
        for a in appliers {
            total += a.await.unwrap();
        }
        p.stop().await.unwrap();
        assert_eq!(admitted_after.load(Ordering::SeqCst), 0);
        assert_eq!(p.info().applied, total as u64);
        assert_eq!(p.info().completed, total as u64);
        assert_eq!(p.job_count(), 0);
    }
}
