//! Signals: sender filters, dispatch uids, disconnect, send and send_robust,
//! and what the pool sends.

mod support;

use std::sync::{Arc, Mutex};

use greenpool::signals::{self, ConnectOptions, Signal};
use greenpool::{job, PoolId};
use support::{pool, Calls};

static TEST_SIGNAL: Signal<u32, u32> = Signal::new("test");

#[test]
fn send_reaches_matching_receivers_in_order_with_their_replies() {
    static S: Signal<u32, u32> = Signal::new("order");
    let a = PoolId::ANONYMOUS;
    let k1 = S.connect(|_, n| n + 1);
    let k2 = S.connect(|_, n| n * 10);
    let replies = S.send(a, &3).unwrap();
    assert_eq!(replies, vec![(k1.clone(), 4), (k2.clone(), 30)]);
    assert!(S.disconnect(&k1));
    assert!(!S.disconnect(&k1), "second disconnect reports absence");
    assert_eq!(S.send(a, &3).unwrap(), vec![(k2.clone(), 30)]);
    assert!(S.disconnect(&k2));
    assert!(S.is_empty());
    assert!(S.send(a, &3).unwrap().is_empty());
    assert_eq!(S.name(), "order");
}

#[tokio::test]
async fn a_sender_filter_receives_only_that_pool() {
    static S: Signal<(), &'static str> = Signal::new("filter");
    let (p, q) = (pool(1), pool(1));
    S.connect_with(ConnectOptions::new().sender(p.id()), |_, _| "p only");
    S.connect(|_, _| "all");
    let from_p: Vec<_> = S
        .send(p.id(), &())
        .unwrap()
        .into_iter()
        .map(|r| r.1)
        .collect();
    let from_q: Vec<_> = S
        .send(q.id(), &())
        .unwrap()
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(from_p, vec!["p only", "all"]);
    assert_eq!(from_q, vec!["all"]);
}

#[test]
fn a_dispatch_uid_connects_once() {
    let k1 = TEST_SIGNAL.connect_with(ConnectOptions::new().dispatch_uid("u"), |_, _| 1);
    let k2 = TEST_SIGNAL.connect_with(ConnectOptions::new().dispatch_uid("u"), |_, _| 2);
    assert_eq!(k1, k2);
    let replies = TEST_SIGNAL.send(PoolId::ANONYMOUS, &0).unwrap();
    assert_eq!(replies.iter().map(|r| r.1).collect::<Vec<_>>(), vec![1]);
    assert!(TEST_SIGNAL.disconnect_uid("u"));
    assert!(TEST_SIGNAL.send(PoolId::ANONYMOUS, &0).unwrap().is_empty());
}

#[test]
fn send_stops_at_a_panicking_receiver_and_send_robust_goes_on() {
    static S: Signal<(), u8> = Signal::new("robust");
    let a = S.connect(|_, _| 1);
    let b = S.connect(|_, _| panic!("receiver broke"));
    let c = S.connect(|_, _| 3);
    let (key, info) = S.send(PoolId::ANONYMOUS, &()).unwrap_err();
    assert_eq!(key, b);
    assert_eq!(info.message(), "receiver broke");
    let replies = S.send_robust(PoolId::ANONYMOUS, &());
    assert_eq!(replies.len(), 3);
    assert_eq!(replies[0].0, a);
    assert_eq!(*replies[0].1.as_ref().unwrap(), 1);
    assert!(replies[1].1.is_err());
    assert_eq!(replies[2].0, c);
    assert_eq!(*replies[2].1.as_ref().unwrap(), 3);
}

#[test]
fn a_receiver_may_connect_from_inside_a_send() {
    static S: Signal<(), ()> = Signal::new("reentrant");
    S.connect(|_, _| {
        S.connect(|_, _| ());
    });
    S.send(PoolId::ANONYMOUS, &()).unwrap();
    assert_eq!(S.len(), 2, "applies to the next send; no deadlock");
}

#[tokio::test]
async fn the_pool_sends_apply_with_the_jobs_name_and_args() {
    let p = pool(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let key =
        signals::APPLY.connect_with(ConnectOptions::new().sender(p.id()), move |sender, a| {
            s.lock()
                .unwrap()
                .push((sender, a.job_id, a.name.clone(), a.args.clone()));
        });
    let h = p
        .apply_async(job(async { 2 + 3 }).name("add").args_repr("(2, 3)"))
        .await
        .unwrap();
    let id = h.id();
    h.await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            p.id(),
            id,
            Some("add".to_owned()),
            Some("(2, 3)".to_owned())
        )]
    );
    signals::APPLY.disconnect(&key);
}

#[tokio::test]
async fn a_panicking_pool_signal_receiver_does_not_disturb_the_pool() {
    let p = greenpool::TaskPool::builder().limit(1).build().unwrap();
    let calls = Calls::default();
    let c = calls.clone();
    let only = || ConnectOptions::new().sender(p.id());
    let k1 = signals::POOL_STARTED.connect_with(only(), |_, _| panic!("receiver broke"));
    let k2 = signals::POOL_STARTED.connect_with(only(), move |_, _| c.push("second"));
    let k3 = signals::APPLY.connect_with(only(), |_, _| panic!("apply receiver broke"));
    p.start().unwrap();
    assert_eq!(calls.take(), vec!["second"]);
    let h = p.apply_async(job(async { 1 })).await.unwrap();
    assert_eq!(h.await.completed(), Some(1));
    signals::POOL_STARTED.disconnect(&k1);
    signals::POOL_STARTED.disconnect(&k2);
    signals::APPLY.disconnect(&k3);
}

#[tokio::test]
async fn a_receiver_that_closes_the_pool_sees_only_jobs_that_run() {
    // The apply signal is sent once the job is surely admitted: a receiver
    // that closes the pool does not turn the job it was told about into a
    // refused one.
    let p = pool(2);
    let told = Arc::new(Mutex::new(Vec::new()));
    let key = {
        let (p2, told) = (p.clone(), told.clone());
        signals::APPLY.connect_with(ConnectOptions::new().sender(p.id()), move |_, args| {
            told.lock().unwrap().push(args.job_id);
            p2.close();
        })
    };
    let applied = p.apply_async(job(async { 5 })).await;
    signals::APPLY.disconnect(&key);
    let h = applied.expect("the job the receiver was told about runs");
    assert_eq!(*told.lock().unwrap(), vec![h.id()]);
    assert_eq!(h.await.completed(), Some(5));
    p.stop().await.unwrap();
}
