//! info(): Celery's keys, counters, negative free.

mod support;

use greenpool::{job, KillResult};
use support::{parked, pool, Gate};

#[tokio::test]
async fn info_serialises_with_celerys_keys_and_counts_outcomes() {
    let p = pool(3);
    p.apply_async(job(async {})).await.unwrap().await;
    p.apply_async(job(async { panic!("x") }))
        .await
        .unwrap()
        .await;
    let gate = Gate::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let parked_a = p.apply_async(parked(&gate, Some(tx))).await.unwrap();
    rx.await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _parked_b = p.apply_async(parked(&gate, Some(tx))).await.unwrap();
    rx.await.unwrap();
    assert_eq!(
        p.terminate_job(parked_a.id(), None).await,
        KillResult::Killed
    );
    p.shrink(3).unwrap();

    let v = serde_json::to_value(p.info()).unwrap();
    assert_eq!(v["implementation"], "greenpool:TaskPool");
    assert_eq!(v["max-concurrency"], 0);
    assert_eq!(v["free-threads"], -1);
    assert_eq!(v["running-threads"], 1);
    assert_eq!(v["state"], "RUN");
    assert_eq!(v["applied"], 4);
    assert_eq!(v["completed"], 1);
    assert_eq!(v["panicked"], 1);
    assert_eq!(v["terminated"], 1);
    assert_eq!(v["waiting"], 0);
    assert_eq!(v["callback-panics"], 0);
    gate.open();
    p.stop().await.unwrap();
    let v = serde_json::to_value(p.info()).unwrap();
    assert_eq!(v["state"], "TERMINATE");
    assert_eq!(v["completed"], 2);
    assert_eq!(v["free-threads"], 0);
}
