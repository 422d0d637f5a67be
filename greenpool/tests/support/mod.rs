//! Helpers shared by the pool's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use greenpool::{Job, JobBuilder, JobContext, JobId, TaskPool};
use tokio::sync::{oneshot, Notify};

/// A started pool with `limit` slots.
pub fn pool(limit: i64) -> TaskPool {
    let pool = TaskPool::builder().limit(limit).build().unwrap();
    pool.start().unwrap();
    pool
}

/// Opens once; jobs park on it until then.
#[derive(Clone, Default)]
pub struct Gate(Arc<GateInner>);

#[derive(Default)]
pub struct GateInner {
    open: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn open(&self) {
        self.0.open.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.0.open.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Counts drops: proves a job's future was dropped (killed) or never built.
#[derive(Clone, Default)]
pub struct DropCounter(pub Arc<AtomicUsize>);

impl DropCounter {
    pub fn token(&self) -> DropToken {
        DropToken(self.0.clone())
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct DropToken(Arc<AtomicUsize>);

impl Drop for DropToken {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A job that tells `started` when it runs, then parks until `gate` opens.
pub fn parked(
    gate: &Gate,
    started: Option<oneshot::Sender<JobId>>,
) -> JobBuilder<impl FnOnce(JobContext) -> futures_like::Parked + Send + 'static, ()> {
    let gate = gate.clone();
    Job::new(move |ctx: JobContext| futures_like::parked(gate, started, ctx.id()))
}

pub mod futures_like {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;

    pub type Parked = Pin<Box<dyn Future<Output = ()> + Send>>;

    pub fn parked(gate: Gate, started: Option<oneshot::Sender<JobId>>, id: JobId) -> Parked {
        Box::pin(async move {
            if let Some(tx) = started {
                let _ = tx.send(id);
            }
            gate.wait().await;
        })
    }
}

/// A callback counter: how many times each outcome kind arrived.
#[derive(Clone, Default)]
pub struct Calls(pub Arc<Mutex<Vec<String>>>);

impl Calls {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}
