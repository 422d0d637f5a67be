//! Applying: callbacks exactly once, accept callback, panics, backpressure,
//! the non-waiting variant, cancel safety, detached handles.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use greenpool::{job, ApplyError, Job, JobId, Outcome, TaskPool};
use support::{parked, pool, Calls, DropCounter, Gate};
use tokio::sync::oneshot;
use tokio_test::{assert_pending, assert_ready, task};

#[tokio::test]
async fn accept_then_result_callback_exactly_once_with_the_value() {
    let p = pool(4);
    let calls = Calls::default();
    let (a, c) = (calls.clone(), calls.clone());
    let accepted_id = Arc::new(Mutex::new(None));
    let aid = accepted_id.clone();
    let h = p
        .apply_async(
            Job::new(|ctx| async move { ctx.id().as_u64() + 41 })
                .accept_callback(move |id, _t| {
                    *aid.lock().unwrap() = Some(id);
                    a.push("accept");
                })
                .callback(move |o: &Outcome<u64>| {
                    c.push(format!("result {:?}", o.completed_ref()))
                }),
        )
        .await
        .unwrap();
    let id = h.id();
    let out = h.await;
    assert_eq!(out.completed(), Some(id.as_u64() + 41));
    assert_eq!(
        *accepted_id.lock().unwrap(),
        Some(id),
        "accept gets the job's own id"
    );
    assert_eq!(
        calls.take(),
        vec![
            "accept".to_string(),
            format!("result Some({})", id.as_u64() + 41)
        ]
    );
    p.stop().await.unwrap();
    assert!(calls.take().is_empty(), "no second callback");
    assert_eq!(p.job_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn accept_time_is_when_the_job_first_runs() {
    let p = pool(1);
    let gate = Gate::new();
    let first = p.apply_async(parked(&gate, None)).await.unwrap();
    let times = Arc::new(Mutex::new(None));
    let t = times.clone();
    let mut second = task::spawn(p.apply_async(job(async {}).accept_callback(move |_, at| {
        *t.lock().unwrap() = Some(at);
    })));
    assert_pending!(second.poll());
    tokio::time::advance(std::time::Duration::from_secs(5)).await;
    let before = tokio::time::Instant::now();
    gate.open();
    first.await;
    let second = second.await.unwrap();
    second.await;
    let at = times.lock().unwrap().unwrap();
    assert!(
        at >= before,
        "accepted when it ran, not when it was applied"
    );
}

#[tokio::test]
async fn a_panicking_job_reports_panicked_and_the_pool_goes_on() {
    let p = pool(2);
    let calls = Calls::default();
    let c = calls.clone();
    let h = p
        .apply_async(
            job(async {
                if true {
                    panic!("boom {}", std::hint::black_box(7));
                }
                1u8
            })
            .callback(move |o| c.push(format!("{}", o.is_panicked()))),
        )
        .await
        .unwrap();
    let out = h.await;
    let info = out.panic_info().expect("panicked");
    assert_eq!(info.message(), "boom 7");
    assert_eq!(info.type_name(), "String");
    assert!(
        info.location().unwrap().contains("pool_apply.rs"),
        "{info:?}"
    );
    assert!(!info.backtrace_text().is_empty());
    assert_eq!(calls.take(), vec!["true"]);
    // Other jobs are unaffected.
    let ok = p.apply_async(job(async { 5 })).await.unwrap();
    assert_eq!(ok.await.completed(), Some(5));
    assert_eq!(p.info().panicked, 1);
    assert_eq!(p.free(), 2, "the slot came back");
}

#[tokio::test]
async fn a_target_that_panics_while_building_its_future_is_panicked_too() {
    let p = pool(1);
    let h = p
        .apply_async(Job::new(|_ctx| -> std::future::Ready<()> {
            panic!("early")
        }))
        .await
        .unwrap();
    assert_eq!(h.await.panic_info().unwrap().message(), "early");
}

#[tokio::test]
async fn a_panicking_callback_is_caught_and_the_map_still_cleaned() {
    let p = pool(1);
    let h = p
        .apply_async(job(async { 3 }).callback(|_| panic!("callback broke")))
        .await
        .unwrap();
    assert_eq!(
        h.await.completed(),
        Some(3),
        "the handle still gets the outcome"
    );
    assert_eq!(p.job_count(), 0);
    assert_eq!(p.info().callback_panics, 1);
    assert_eq!(p.free(), 1);
    let again = p.apply_async(job(async { 4 })).await.unwrap();
    assert_eq!(again.await.completed(), Some(4));
}

#[tokio::test]
async fn a_panicking_accept_callback_does_not_stop_the_job() {
    let p = pool(1);
    let h = p
        .apply_async(job(async { 9 }).accept_callback(|_, _| panic!("accept broke")))
        .await
        .unwrap();
    assert_eq!(h.await.completed(), Some(9));
    assert_eq!(p.info().callback_panics, 1);
}

#[tokio::test]
async fn full_pool_makes_apply_wait_and_try_apply_give_the_job_back() {
    let p = pool(1);
    let gate = Gate::new();
    let first = p.apply_async(parked(&gate, None)).await.unwrap();

    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let err = p
        .try_apply_async(job(async move {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap_err();
    assert!(err.is_full());
    assert!(err.to_string().contains("pool is full"));

    let mut waiting = task::spawn(p.apply_async(err.into_job()));
    assert_pending!(waiting.poll());
    assert_eq!(p.info().waiting, 1);
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    gate.open();
    first.await;
    assert!(waiting.is_woken());
    let second = assert_ready!(waiting.poll()).unwrap();
    second.await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(p.info().waiting, 0);
}

#[tokio::test]
async fn putlocks_off_makes_apply_fail_when_full() {
    let p = TaskPool::builder()
        .limit(1)
        .putlocks(false)
        .build()
        .unwrap();
    p.start().unwrap();
    let gate = Gate::new();
    let _first = p.apply_async(parked(&gate, None)).await.unwrap();
    let err = p.apply_async(job(async {})).await.unwrap_err();
    assert!(matches!(err, ApplyError::Full(_)));
    gate.open();
}

#[tokio::test]
async fn dropping_a_waiting_apply_applies_nothing() {
    let p = pool(1);
    let gate = Gate::new();
    let first = p.apply_async(parked(&gate, None)).await.unwrap();
    let drops = DropCounter::default();
    let token = drops.token();
    let calls = Calls::default();
    let c = calls.clone();
    let mut waiting = task::spawn(
        p.apply_async(
            job(async move {
                drop(token);
            })
            .callback(move |_| c.push("cb")),
        ),
    );
    assert_pending!(waiting.poll());
    drop(waiting);
    assert_eq!(drops.get(), 1, "the job was dropped, never run");
    assert_eq!(p.info().waiting, 0);
    gate.open();
    first.await;
    p.stop().await.unwrap();
    assert_eq!(calls.len(), 0, "no callback for a job never applied");
    assert_eq!(p.info().applied, 1);
}

#[tokio::test]
async fn a_dropped_handle_detaches_and_the_callback_still_fires() {
    let p = pool(1);
    let (tx, rx) = oneshot::channel();
    let h = p
        .apply_async(job(async { 11 }).callback(move |o| {
            let _ = tx.send(o.completed_ref().copied());
        }))
        .await
        .unwrap();
    drop(h);
    assert_eq!(rx.await.unwrap(), Some(11));
}

#[tokio::test]
async fn job_ids_are_unique_and_never_reused() {
    let p = pool(1);
    let mut seen = std::collections::HashSet::new();
    let mut last = None::<JobId>;
    for _ in 0..200 {
        let h = p.apply_async(job(async {})).await.unwrap();
        let id = h.id();
        assert!(seen.insert(id), "id {id} reused");
        if let Some(prev) = last {
            assert!(id > prev);
        }
        last = Some(id);
        h.await;
    }
}

#[tokio::test]
async fn the_handle_reports_when_its_job_has_finished() {
    let p = pool(1);
    let gate = Gate::new();
    let (tx, rx) = oneshot::channel();
    let h = p.apply_async(parked(&gate, Some(tx))).await.unwrap();
    rx.await.unwrap();
    assert!(!h.is_finished());
    gate.open();
    let id = h.id();
    let mut h = h;
    (&mut h).await;
    assert!(h.is_finished());
    assert_eq!(h.id(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_from_many_tasks_each_get_one_callback() {
    let p = pool(16);
    let count = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..4 {
        let p = p.clone();
        let count = count.clone();
        submitters.push(tokio::spawn(async move {
            for i in 0..500u32 {
                let c = count.clone();
                let detached = p
                    .apply_async(
                        job(async move {
                            tokio::task::yield_now().await;
                            i
                        })
                        .callback(move |_| {
                            c.fetch_add(1, Ordering::SeqCst);
                        }),
                    )
                    .await
                    .unwrap();
                drop(detached);
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }
    p.stop().await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2000);
    assert_eq!(p.job_count(), 0);
    assert_eq!(p.running(), 0);
    let info = p.info();
    assert_eq!((info.applied, info.completed), (2000, 2000));
}
