//! The pool, its handles and its futures are Send and Sync.

use greenpool::{
    signals::Signal, ApplyError, Job, JobContext, JobHandle, JobId, Outcome, PoolBuilder, PoolInfo,
    TaskPool,
};

fn is_send<T: Send>(_: &T) {}
fn is_sync<T: Sync>(_: &T) {}
fn send_sync<T: Send + Sync>() {}

#[test]
fn types_are_send_and_sync() {
    send_sync::<TaskPool>();
    send_sync::<PoolBuilder>();
    send_sync::<JobId>();
    send_sync::<JobContext>();
    send_sync::<Outcome<String>>();
    send_sync::<PoolInfo>();
    send_sync::<Signal<(), ()>>();
    send_sync::<ApplyError<u8>>();
    fn handle_is_send<T: Send>() {
        fn s<X: Send>() {}
        s::<JobHandle<T>>();
    }
    handle_is_send::<u32>();
}

#[tokio::test]
async fn returned_futures_are_send() {
    let pool = TaskPool::builder().limit(1).build().unwrap();
    pool.start().unwrap();
    let apply = pool.apply_async(Job::new(|_c: JobContext| async { 1 }));
    is_send(&apply);
    let handle = apply.await.unwrap();
    let kill = pool.terminate_job(handle.id(), None);
    is_send(&kill);
    drop(kill);
    is_send(&handle);
    let stop = pool.stop();
    is_send(&stop);
    is_sync(&pool);
    handle.await;
    stop.await.unwrap();
}
