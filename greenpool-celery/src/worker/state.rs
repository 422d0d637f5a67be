//! [`Shared`]: the state of a running worker that the consume loop, every
//! request handler and remote control's hooks share: the settings, the
//! registry, the pool, the writer, the result store, the books of unacked
//! deliveries and the counters.
//!
//! The request path (`crate::request`) imports this file; the lifecycle
//! (`worker/lifecycle.rs`) calls the request path. That one edge pair
//! between `worker/` and `request` is between this file and the
//! lifecycle, not a circle through one file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use greenpool::{TaskPool, Timer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{ShutdownHandle, WorkerReport};
use crate::backend::{ResultMeta, TaskState};
use crate::config::WorkerConfig;
use crate::outbox::{Outbox, ResultStore};
use crate::protocol::TaskMessage;
use crate::registry::TaskRegistry;

/// What the worker did so far (the [`WorkerReport`]'s counts).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages taken off the queues.
    pub(crate) received: AtomicU64,
    /// Tasks that returned a value.
    pub(crate) succeeded: AtomicU64,
    /// Tasks that failed, and messages that could not run.
    pub(crate) failed: AtomicU64,
    /// Requests revoked (expired, or by remote control).
    pub(crate) revoked: AtomicU64,
    /// Retries sent on.
    pub(crate) retried: AtomicU64,
}

/// State shared by the consumer and every message handler.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The worker's settings.
    pub(crate) config: WorkerConfig,
    /// The tasks it runs.
    pub(crate) registry: Arc<TaskRegistry>,
    /// The pool requests run in.
    pub(crate) pool: TaskPool,
    /// The transport's writer: acks, requeues, follow-ups.
    pub(crate) acks: Outbox,
    /// Where results go (`None` without a result backend).
    pub(crate) backend: Option<ResultStore>,
    /// Delivery tags taken but not yet acked, restored at shutdown.
    pub(crate) outstanding: Mutex<HashSet<String>>,
    /// Warm shutdown (ETA waits end on it).
    pub(crate) warm: CancellationToken,
    /// What the worker did (the report's counts).
    pub(crate) counters: Counters,
    /// The green timer ETA requests wait on.
    pub(crate) timer: Timer,
    /// The node remote control and events see.
    pub(crate) control: Arc<crate::control::Node>,
    /// The node name, shared by every task's context.
    pub(crate) hostname: Arc<str>,
}

/// Counts one on `c`.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    /// The state of a worker that has not taken a message yet: no tag
    /// outstanding, counters at zero, a timer of its own.
    pub(crate) fn new(
        config: WorkerConfig,
        registry: Arc<TaskRegistry>,
        pool: TaskPool,
        acks: Outbox,
        backend: Option<ResultStore>,
        shutdown: &ShutdownHandle,
        control: Arc<crate::control::Node>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            hostname: Arc::from(config.hostname.as_str()),
            config,
            registry,
            pool,
            acks,
            backend,
            outstanding: Mutex::new(HashSet::new()),
            warm: shutdown.warm.clone(),
            counters: Counters::default(),
            timer: TaskPool::new_timer(),
            control,
        })
    }

    /// Acks delivery `tag` if it is still unacked (once).
    pub(crate) fn ack(&self, tag: &str) {
        // The tag held in the set goes on to the ack: no copy.
        let held = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(tag);
        if let Some(tag) = held {
            self.acks.ack(tag);
        }
    }

    /// Puts a delivered message back on its queue (a requeueing
    /// reject): `again` pushed back and the delivery acked, in that
    /// order, on Redis (one atomic batch); `basic.reject` with requeue on
    /// AMQP.
    pub(crate) fn requeue(&self, tag: &str, again: crate::broker::Publish) {
        let held = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(tag);
        if let Some(tag) = held {
            self.acks.requeue(tag, again);
        }
    }

    /// Queues the result of `msg` for storing, when there is a result
    /// backend.
    pub(crate) fn store(
        &self,
        msg: &TaskMessage,
        state: TaskState,
        result: Value,
        traceback: Option<String>,
    ) {
        let Some(backend) = &self.backend else { return };
        backend.store(
            &self.meta(msg, state, result, traceback),
            msg.properties.reply_to.as_deref(),
        );
    }

    /// The meta of `msg` in `state`; with `result_extended`, the request
    /// details too (args and kwargs from `msg`, so callers that moved them
    /// out put them back first).
    pub(crate) fn meta(
        &self,
        msg: &TaskMessage,
        state: TaskState,
        result: Value,
        traceback: Option<String>,
    ) -> ResultMeta {
        let mut meta = ResultMeta::new(&msg.headers.id, state, result);
        meta.traceback = traceback;
        meta.group_id = msg.headers.group.clone();
        meta.parent_id = msg.headers.parent_id.clone();
        if self.config.result_extended {
            meta.name = Some(msg.headers.task.clone());
            meta.args = Some(msg.args.clone());
            meta.kwargs = Some(msg.kwargs.clone());
            meta.worker = Some(self.config.hostname.clone());
            meta.retries = Some(msg.headers.retries);
            meta.queue = Some(msg.properties.delivery_info.routing_key.clone());
        }
        meta
    }

    /// The tags of the messages still unacked (prefetched, waiting for
    /// their ETA, or late-ack tasks that were killed), taken out of the
    /// books.
    pub(crate) fn take_outstanding(&self) -> Vec<String> {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }

    /// The worker's report: its counters, and the messages it gave back.
    pub(crate) fn report(&self, restored: u64) -> WorkerReport {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerReport {
            received: load(&c.received),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            revoked: load(&c.revoked),
            retried: load(&c.retried),
            restored,
        }
    }
}
