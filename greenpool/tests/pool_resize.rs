//! Resizing while jobs run: grow wakes waiters, shrink makes debt, shrink
//! below zero is refused.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use greenpool::{job, ResizeError};
use support::{parked, pool, Gate};
use tokio_test::{assert_pending, assert_ready, task};

#[tokio::test]
async fn limit_zero_is_paused_until_the_pool_grows() {
    let p = pool(0);
    assert_eq!(p.free(), 0);
    let mut waiting = task::spawn(p.apply_async(job(async { 1 })));
    assert_pending!(waiting.poll());
    assert_eq!(p.grow(1), Ok(1));
    assert!(waiting.is_woken());
    let h = assert_ready!(waiting.poll()).unwrap();
    assert_eq!(h.await.completed(), Some(1));
}

#[tokio::test]
async fn grow_wakes_a_blocked_apply() {
    let p = pool(1);
    let gate = Gate::new();
    let _a = p.apply_async(parked(&gate, None)).await.unwrap();
    let mut b = task::spawn(p.apply_async(parked(&gate, None)));
    assert_pending!(b.poll());
    p.grow(1).unwrap();
    let _b = assert_ready!(b.poll()).unwrap();
    assert_eq!(p.running(), 2);
    assert_eq!(p.free(), 0);
    gate.open();
}

#[tokio::test]
async fn shrink_never_interrupts_running_jobs_and_free_goes_negative() {
    let p = pool(2);
    let gate = Gate::new();
    let (tx1, rx1) = tokio::sync::oneshot::channel();
    let (tx2, rx2) = tokio::sync::oneshot::channel();
    let a = p.apply_async(parked(&gate, Some(tx1))).await.unwrap();
    let b = p.apply_async(parked(&gate, Some(tx2))).await.unwrap();
    rx1.await.unwrap();
    rx2.await.unwrap();
    assert_eq!(p.shrink(2), Ok(0));
    assert_eq!(p.free(), -2);
    assert_eq!(p.running(), 2, "both kept running");
    assert_eq!(p.info().free_threads, -2);
    // Nothing new starts while in debt, even after a grow that only pays it.
    p.grow(1).unwrap();
    assert!(p.try_apply_async(job(async {})).unwrap_err().is_full());
    gate.open();
    assert!(a.await.is_completed());
    assert!(b.await.is_completed());
    assert_eq!(p.free(), 1);
    assert_eq!(p.limit(), 1);
    let c = p.try_apply_async(job(async { 2 })).unwrap();
    assert_eq!(c.await.completed(), Some(2));
}

#[tokio::test]
async fn shrink_below_zero_is_refused_and_the_limit_kept() {
    let p = pool(2);
    let err = p.shrink(3).unwrap_err();
    assert_eq!(err, ResizeError::BelowZero { by: 3, limit: 2 });
    assert_eq!(
        err.to_string(),
        "cannot shrink by 3: limit is 2; shrink by at most 2"
    );
    assert_eq!(p.limit(), 2);
    assert_eq!(p.free(), 2);
    assert_eq!(p.shrink(2), Ok(0));
    assert!(p.shrink(1).is_err());
}

#[tokio::test]
async fn grow_past_the_largest_limit_is_refused() {
    let p = pool(1);
    assert!(matches!(
        p.grow(usize::MAX),
        Err(ResizeError::TooLarge { .. })
    ));
    assert_eq!(p.limit(), 1);
}

/// Every limit × running × shrink combination up to 4, through the pool.
#[tokio::test]
async fn shrink_every_small_combination() {
    for limit in 0..=4usize {
        for running in 0..=limit {
            for by in 0..=limit {
                let case = format!("limit {limit}, running {running}, shrink {by}");
                let p = pool(limit as i64);
                let gate = Gate::new();
                let mut handles = Vec::new();
                for _ in 0..running {
                    handles.push(p.try_apply_async(parked(&gate, None)).unwrap());
                }
                p.shrink(by).unwrap();
                let new_limit = limit - by;
                assert_eq!(p.limit(), new_limit, "{case}");
                assert_eq!(
                    p.free(),
                    new_limit as isize - running as isize,
                    "{case}: free"
                );
                let admitted = p.try_apply_async(parked(&gate, None));
                assert_eq!(admitted.is_ok(), running < new_limit, "{case}: admit");
                if let Ok(h) = admitted {
                    handles.push(h);
                }
                gate.open();
                for h in handles {
                    assert!(h.await.is_completed(), "{case}");
                }
                assert_eq!(p.free(), new_limit as isize, "{case}: all back");
                assert_eq!(p.running(), 0, "{case}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizing_from_threads_while_jobs_run_keeps_the_books() {
    let p = pool(4);
    let max_seen = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let p = p.clone();
        let (max_seen, now) = (max_seen.clone(), now.clone());
        tokio::spawn(async move {
            for _ in 0..2000 {
                let (m, n) = (max_seen.clone(), now.clone());
                let h = p
                    .apply_async(job(async move {
                        let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(cur, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        n.fetch_sub(1, Ordering::SeqCst);
                    }))
                    .await
                    .unwrap();
                drop(h);
            }
        })
    };
    let resizers: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                for _ in 0..5000 {
                    p.grow(1).unwrap();
                    p.shrink(1).unwrap();
                }
            })
        })
        .collect();
    for r in resizers {
        r.join().unwrap();
    }
    feeder.await.unwrap();
    p.stop().await.unwrap();
    assert_eq!(p.limit(), 4);
    assert_eq!(p.free(), 4);
    assert_eq!(p.running(), 0);
    // Each resizer adds at most one slot at a time.
    assert!(max_seen.load(Ordering::SeqCst) <= 6);
}
