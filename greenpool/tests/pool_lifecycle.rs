//! Lifecycle: start, close, stop on a never-started pool, restart, flags.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use greenpool::{
    job, signals, ApplyError, BuildError, PoolState, RestartError, StartError, TaskPool,
};
use support::{pool, Calls};

// The class facts, checked when this file compiles.
const _: () =
    assert!(!TaskPool::SIGNAL_SAFE && TaskPool::IS_GREEN && !TaskPool::TASK_JOIN_WILL_BLOCK);

#[test]
fn class_facts_match_celerys_eventlet_pool() {
    let p = TaskPool::builder().limit(3).build().unwrap();
    assert!(!p.signal_safe() && p.is_green() && !p.task_join_will_block());
    assert_eq!(p.num_processes(), 3);
    assert_eq!(p.limit(), 3);
}

#[test]
fn builder_refuses_bad_options_without_panicking() {
    assert_eq!(
        TaskPool::builder().build().unwrap_err(),
        BuildError::MissingLimit
    );
    assert_eq!(
        TaskPool::builder().limit(-1).build().unwrap_err(),
        BuildError::NegativeLimit(-1)
    );
    assert!(matches!(
        TaskPool::builder().limit(i64::MAX).build().unwrap_err(),
        BuildError::LimitTooLarge { .. }
    ));
    assert_eq!(
        TaskPool::builder()
            .limit(1)
            .option("", "x")
            .build()
            .unwrap_err(),
        BuildError::EmptyOptionKey
    );
    let p = TaskPool::builder()
        .limit(0)
        .option("hostname", "w1")
        .build()
        .unwrap();
    assert_eq!(p.options().get("hostname").map(String::as_str), Some("w1"));
    let msg = BuildError::NegativeLimit(-3).to_string();
    assert!(msg.starts_with("limit -3 is negative"), "{msg}");
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let p = TaskPool::builder().limit(1).build().unwrap();
    assert_eq!(p.start(), Err(StartError::NoRuntime));
    assert!(!p.did_start_ok());
    assert_eq!(p.state(), PoolState::NotStarted);
}

#[tokio::test]
async fn start_runs_once_and_sends_pool_started() {
    let p = TaskPool::builder().limit(2).build().unwrap();
    let calls = Calls::default();
    let c = calls.clone();
    let key = signals::POOL_STARTED.connect_with(
        signals::ConnectOptions::new().sender(p.id()),
        move |sender, _| c.push(sender.to_string()),
    );
    assert!(!p.active());
    p.start().unwrap();
    assert!(p.active());
    assert!(p.did_start_ok());
    assert_eq!(p.state(), PoolState::Run);
    assert_eq!(calls.take(), vec![p.id().to_string()]);
    assert_eq!(p.start(), Err(StartError::NotStartable(PoolState::Run)));
    assert!(calls.take().is_empty(), "second start sent nothing");
    signals::POOL_STARTED.disconnect(&key);
}

#[tokio::test]
async fn apply_before_start_gives_the_job_back_unrun() {
    let p = TaskPool::builder().limit(2).build().unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let err = p
        .apply_async(job(async move { r.store(true, Ordering::SeqCst) }))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ApplyError::NotRunning {
            state: PoolState::NotStarted,
            ..
        }
    ));
    assert!(err.to_string().contains("start() it first"));
    // The returned job is intact: it runs once the pool has started.
    p.start().unwrap();
    let h = p.apply_async(err.into_job()).await.unwrap();
    assert!(h.await.is_completed());
    assert!(ran.load(Ordering::SeqCst));
}

#[tokio::test]
async fn close_refuses_new_jobs_but_running_ones_finish() {
    let p = pool(2);
    let gate = support::Gate::new();
    let running = p.apply_async(support::parked(&gate, None)).await.unwrap();
    p.close();
    assert!(!p.active());
    assert_eq!(p.state(), PoolState::Close);
    let err = p.try_apply_async(job(async {})).unwrap_err();
    assert!(matches!(
        err,
        ApplyError::NotRunning {
            state: PoolState::Close,
            ..
        }
    ));
    let err = p.apply_async(job(async {})).await.unwrap_err();
    assert!(!err.is_full());
    gate.open();
    assert!(running.await.is_completed());
    p.stop().await.unwrap();
    assert_eq!(p.state(), PoolState::Terminate);
}

#[tokio::test]
async fn stopping_a_pool_that_never_started_sends_both_signals() {
    let p = TaskPool::builder().limit(1).build().unwrap();
    let calls = Calls::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let only_p = || signals::ConnectOptions::new().sender(p.id());
    let k1 = signals::POOL_PRE_SHUTDOWN.connect_with(only_p(), move |_, _| c1.push("pre"));
    let k2 = signals::POOL_POST_SHUTDOWN.connect_with(only_p(), move |_, _| c2.push("post"));
    p.stop().await.unwrap();
    assert_eq!(calls.take(), vec!["pre", "post"]);
    assert_eq!(p.state(), PoolState::Terminate);
    assert!(!p.active());
    signals::POOL_PRE_SHUTDOWN.disconnect(&k1);
    signals::POOL_POST_SHUTDOWN.disconnect(&k2);
}

#[tokio::test]
async fn restart_is_not_supported() {
    let p = pool(1);
    assert_eq!(p.restart(), Err(RestartError::NotSupported));
    assert!(p
        .restart()
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    assert!(p.active(), "a refused restart leaves the pool running");
}

#[tokio::test]
async fn start_after_stop_is_refused() {
    let p = pool(1);
    p.stop().await.unwrap();
    assert_eq!(
        p.start(),
        Err(StartError::NotStartable(PoolState::Terminate))
    );
}

#[tokio::test]
async fn clones_share_the_pool_and_dropping_one_kills_nothing() {
    let p = pool(1);
    let q = p.clone();
    assert!(p.ptr_eq(&q));
    assert!(!p.ptr_eq(&pool(1)));
    let gate = support::Gate::new();
    let h = q.apply_async(support::parked(&gate, None)).await.unwrap();
    drop(q);
    assert_eq!(p.job_count(), 1);
    gate.open();
    assert!(h.await.is_completed());
    let dbg = format!("{p:?}");
    assert!(dbg.contains("limit: 1"), "{dbg}");
}
