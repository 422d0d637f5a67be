//! Pipelining of acks and result stores: operations queue up while the
//! previous round trip is in flight and go out together in the next one.
//!
//! Under light load every operation leaves at once (the queue holds only
//! it); under heavy load a round trip carries hundreds of acks (one ZREM
//! and one HDEL for all of them) and results (one script call).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::broker::keys::{UNACKED, UNACKED_INDEX};
use crate::scripts::Scripts;
use crate::stats::RedisStats;

/// Most operations sent in one round trip.
const MAX_BATCH: usize = 1024;

/// Attempts per round trip before its operations are given up (logged).
const ATTEMPTS: u32 = 5;

enum Op {
    Ack(String),
    Store { key: String, payload: String },
    Push { key: String, payload: String },
    Flush(oneshot::Sender<()>),
}

/// A background task that sends queued operations in pipelines.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Op>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts the sender task on `conn`. Stores expire after
    /// `result_expires` seconds (0: never).
    pub(crate) fn spawn(
        conn: MultiplexedConnection,
        scripts: Scripts,
        result_expires: u64,
        stats: Arc<RedisStats>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, conn, scripts, result_expires, stats));
        Batcher {
            tx,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues the ack of `tag` (removal from `unacked` and `unacked_index`).
    pub(crate) fn ack(&self, tag: String) {
        let _ = self.tx.send(Op::Ack(tag));
    }

    /// Queues a result store on `key`.
    pub(crate) fn store(&self, key: String, payload: String) {
        let _ = self.tx.send(Op::Store { key, payload });
    }

    /// Queues an LPUSH of a new message (a follow-up task).
    pub(crate) fn push(&self, key: String, payload: String) {
        let _ = self.tx.send(Op::Push { key, payload });
    }

    /// Waits until everything queued before this call has been sent.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Sends what is queued, then stops the sender task.
    pub(crate) async fn close(&self) {
        self.flush().await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Op>,
    mut conn: MultiplexedConnection,
    scripts: Scripts,
    result_expires: u64,
    stats: Arc<RedisStats>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut acks = Vec::new();
        let mut keys = Vec::new();
        let mut payloads = Vec::new();
        let mut waiters = Vec::new();
        let mut pushes = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Ack(tag) => acks.push(tag),
                Op::Store { key, payload } => {
                    keys.push(key);
                    payloads.push(payload);
                }
                Op::Push { key, payload } => pushes.push((key, payload)),
                Op::Flush(w) => waiters.push(w),
            }
        }
        if !acks.is_empty() || !keys.is_empty() || !pushes.is_empty() {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut pipe = redis::pipe();
                if !acks.is_empty() {
                    pipe.cmd("ZREM").arg(UNACKED_INDEX).arg(&acks).ignore();
                    pipe.cmd("HDEL").arg(UNACKED).arg(&acks).ignore();
                }
                for (key, payload) in &pushes {
                    pipe.cmd("LPUSH").arg(key).arg(payload).ignore();
                }
                if !keys.is_empty() {
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.store)
                        .arg(keys.len())
                        .arg(&keys)
                        .arg(result_expires)
                        .arg(&payloads)
                        .ignore();
                }
                stats.round_trip();
                match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => {
                        stats.add_acked(acks.len() as u64);
                        stats.add_stored(keys.len() as u64);
                        break;
                    }
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        // The digests stay the same once the scripts are back.
                        if let Err(e) = Scripts::load(&mut conn).await {
                            tracing::error!("cannot load the Redis scripts: {e}");
                        }
                    }
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::warn!("redis round trip failed ({e}); retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    Err(e) => {
                        tracing::error!(
                            "giving up {} acks and {} results after {ATTEMPTS} attempts: {e}",
                            acks.len(),
                            keys.len()
                        );
                        break;
                    }
                }
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}
