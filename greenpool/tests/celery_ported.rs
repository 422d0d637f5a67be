//! Behaviour of Celery's own tests for this pool (`test_eventlet.py`'s
//! `test_TaskPool` and `test_concurrency.py`'s `test_BasePool`), restated
//! for greenpool.

mod support;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::FutureExt;

use greenpool::{Job, PoolState, TaskPool};
use support::{pool, Calls};

#[tokio::test]
async fn grow_by_two_from_ten_is_twelve_and_shrink_by_two_is_eight() {
    let p = pool(10);
    assert_eq!(p.grow(2), Ok(12));
    assert_eq!(p.limit(), 12);
    let q = pool(10);
    assert_eq!(q.shrink(2), Ok(8));
    assert_eq!(q.limit(), 8);
    assert_eq!(q.num_processes(), 8);
}

#[tokio::test]
async fn a_fresh_pools_info_has_the_four_celery_keys() {
    let p = TaskPool::builder().limit(10).build().unwrap();
    let v = serde_json::to_value(p.info()).unwrap();
    assert_eq!(v["implementation"], "greenpool:TaskPool");
    assert_eq!(v["max-concurrency"], 10);
    assert_eq!(v["free-threads"], 10);
    assert_eq!(v["running-threads"], 0);
}

#[tokio::test]
async fn accept_then_target_then_callback_in_that_order() {
    for with_accept in [true, false] {
        let p = pool(1);
        let calls = Calls::default();
        let (t, c) = (calls.clone(), calls.clone());
        let job = Job::new(move |_ctx| async move {
            t.push("target (8, 16)");
            42
        })
        .callback(move |o| c.push(format!("callback {:?}", o.completed_ref())));
        if with_accept {
            let a = calls.clone();
            let job = job.accept_callback(move |_, _| a.push("accept"));
            p.apply_async(job).await.unwrap().await;
        } else {
            p.apply_async(job).await.unwrap().await;
        }
        let mut want = vec!["target (8, 16)".to_owned(), "callback Some(42)".to_owned()];
        if with_accept {
            want.insert(0, "accept".to_owned());
        }
        assert_eq!(calls.take(), want, "with accept callback: {with_accept}");
    }
}

#[tokio::test]
async fn a_job_that_raises_still_gets_its_callback() {
    // Celery's BaseException case: the callback gets the failure.
    let p = pool(1);
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let h = p
        .apply_async(Job::new(|_ctx| async { panic!("BaseException") }).callback(
            move |o: &greenpool::Outcome<()>| {
                assert!(o.is_panicked());
                g.fetch_add(1, Ordering::SeqCst);
            },
        ))
        .await
        .unwrap();
    h.await;
    assert_eq!(got.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn callbacks_propagate_raises_the_callbacks_panic_after_the_bookkeeping() {
    // Celery's `propagate`: the callback's exception is raised again. Here
    // it is raised where the job's handle is awaited, after the map, the
    // killers and the slot; without the option it is only logged.
    for propagate in [true, false] {
        let p = TaskPool::builder()
            .limit(1)
            .callbacks_propagate(propagate)
            .build()
            .unwrap();
        p.start().unwrap();
        let h = p
            .apply_async(Job::new(|_ctx| async { 7 }).callback(|_| panic!("KeyError")))
            .await
            .unwrap();
        let awaited = AssertUnwindSafe(h).catch_unwind().await;
        match awaited {
            Err(payload) if propagate => {
                assert_eq!(payload.downcast_ref::<&str>(), Some(&"KeyError"));
            }
            Ok(outcome) if !propagate => assert_eq!(outcome.completed(), Some(7)),
            Err(_) => panic!("raised although callbacks_propagate is off"),
            Ok(_) => panic!("not raised although callbacks_propagate is on"),
        }
        p.stop().await.unwrap();
        assert_eq!(p.job_count(), 0);
        assert_eq!(p.free(), 1);
        assert_eq!(p.info().callback_panics, 1);
    }
}

#[tokio::test]
async fn active_only_while_running_and_close_sets_close() {
    let p = TaskPool::builder().limit(10).build().unwrap();
    assert!(!p.active());
    p.start().unwrap();
    assert!(p.active());
    p.close();
    assert_eq!(p.state(), PoolState::Close);
    assert!(!p.active());
}
