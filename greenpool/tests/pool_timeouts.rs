//! Soft and hard time limits, on a paused clock.

#![allow(clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenpool::{Job, TerminateReason};
use support::pool;

type Calls = Arc<Mutex<Vec<(bool, Duration)>>>;

/// A timeout callback that records its calls.
fn recorder() -> (Calls, impl Fn(bool, Duration) + Send + Sync + 'static) {
    let calls = Calls::default();
    let c = calls.clone();
    (calls, move |soft, d| {
        c.lock().expect("lock").push((soft, d))
    })
}

#[tokio::test(start_paused = true)]
async fn the_hard_limit_kills_with_reason_time_limit() {
    let p = pool(1);
    let (calls, cb) = recorder();
    let h = p
        .apply_async(
            Job::new(|_ctx| std::future::pending::<()>())
                .timeout(Duration::from_secs(4))
                .timeout_callback(cb),
        )
        .await
        .unwrap();
    let t = *h.await.termination().unwrap();
    assert_eq!(t.reason, TerminateReason::TimeLimit);
    assert_eq!(t.to_string(), "time limit");
    assert_eq!(
        *calls.lock().unwrap(),
        vec![(false, Duration::from_secs(4))]
    );
    assert_eq!(p.free(), 1);
    assert_eq!(p.info().terminated, 1);
}

#[tokio::test(start_paused = true)]
async fn the_soft_limit_cancels_the_token_and_the_job_may_finish() {
    let p = pool(1);
    let (calls, cb) = recorder();
    let h = p
        .apply_async(
            Job::new(|ctx| async move {
                ctx.cancelled().await;
                "cleaned up"
            })
            .soft_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .timeout_callback(cb),
        )
        .await
        .unwrap();
    assert_eq!(h.await.completed(), Some("cleaned up"));
    assert_eq!(*calls.lock().unwrap(), vec![(true, Duration::from_secs(2))]);
}

#[tokio::test(start_paused = true)]
async fn soft_then_hard_when_the_job_ignores_its_token() {
    let p = pool(1);
    let (calls, cb) = recorder();
    let h = p
        .apply_async(
            Job::new(|_ctx| std::future::pending::<()>())
                .soft_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(3))
                .timeout_callback(cb),
        )
        .await
        .unwrap();
    assert!(h.await.is_terminated());
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            (true, Duration::from_secs(1)),
            (false, Duration::from_secs(3))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_within_its_limits_completes_without_a_timeout_callback() {
    let p = pool(1);
    let (calls, cb) = recorder();
    let h = p
        .apply_async(
            Job::new(|_ctx| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                1
            })
            .soft_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .timeout_callback(cb),
        )
        .await
        .unwrap();
    assert_eq!(h.await.completed(), Some(1));
    assert!(calls.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_timeout_callback_does_not_stop_the_kill() {
    let p = pool(1);
    let h = p
        .apply_async(
            Job::new(|_ctx| std::future::pending::<()>())
                .timeout(Duration::from_secs(1))
                .timeout_callback(|_, _| panic!("timeout callback broke")),
        )
        .await
        .unwrap();
    assert!(h.await.is_terminated());
    assert_eq!(p.job_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn soft_and_hard_limits_passing_in_one_poll_both_report_soft_first() {
    let p = pool(1);
    let (calls, cb) = recorder();
    let (token_tx, token_rx) = tokio::sync::oneshot::channel();
    let h = p
        .apply_async(
            Job::new(|ctx| async move {
                let _ = token_tx.send(ctx.token().clone());
                std::future::pending::<()>().await
            })
            .soft_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .timeout_callback(cb),
        )
        .await
        .unwrap();
    let token = token_rx.await.expect("the job ran");
    assert!(h.await.is_terminated());
    assert!(token.is_cancelled(), "the soft limit cancelled the token");
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            (true, Duration::from_secs(2)),
            (false, Duration::from_secs(2))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_limit_too_far_away_for_an_instant_means_no_limit() {
    let p = pool(1);
    let (calls, cb) = recorder();
    let h = p
        .apply_async(
            Job::new(|_ctx| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                9
            })
            .soft_timeout(Duration::MAX)
            .timeout(Duration::MAX)
            .timeout_callback(cb),
        )
        .await
        .unwrap();
    assert_eq!(h.await.completed(), Some(9));
    assert!(calls.lock().unwrap().is_empty());
}
