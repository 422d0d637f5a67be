//! [`Shared`]: the state the consume loop and every request handler
//! share: the control node (which holds the worker's settings, registry,
//! pool, result store, name, warm shutdown and its recorder, once), the
//! writer, the books of unacked deliveries and the ETA timer.
//!
//! Counts are not made here: every count of a request (the
//! [`WorkerReport`](super::WorkerReport)'s, `processed` and `stats.total`,
//! the Prometheus task metrics and the task events) is made by the
//! node's recorder (`control/recorder.rs`), reached as
//! `shared.control.recorder`.
//!
//! The request path (`crate::request`) imports this file; the lifecycle
//! (`worker/lifecycle.rs`) calls the request path. That one edge pair
//! between `worker/` and `request` is between this file and the
//! lifecycle, not a circle through one file.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use greenpool::{TaskPool, Timer};
use serde_json::Value;

use crate::backend::{ResultMeta, TaskState};
use crate::control::Node;
use crate::outbox::Outbox;
use crate::protocol::TaskMessage;

/// State shared by the consumer and every message handler.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The node: the worker's settings, tasks, pool, result store, name,
    /// warm shutdown and recorder, and what remote control and events
    /// see.
    pub(crate) control: Arc<Node>,
    /// The transport's writer: acks, requeues, follow-ups.
    pub(crate) acks: Outbox,
    /// Delivery tags taken but not yet acked, restored at shutdown.
    pub(crate) outstanding: Mutex<HashSet<String>>,
    /// The green timer ETA requests wait on.
    pub(crate) timer: Timer,
}

impl Shared {
    /// The state of a worker that has not taken a message yet: no tag
    /// outstanding, a timer of its own.
    pub(crate) fn new(control: Arc<Node>, acks: Outbox) -> Arc<Self> {
        Arc::new(Shared {
            control,
            acks,
            outstanding: Mutex::new(HashSet::new()),
            timer: TaskPool::new_timer(),
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

    /// Hands the end of `msg` (`state`, `result`) to its chord's join when
    /// it is a chord header part (see [`crate::canvas::chord`]): queued
    /// after its result and before its ack, which is `unacked`'s when the
    /// message is still unacked. A chord cannot be joined without a Redis
    /// result backend: that is logged as an error, once per part.
    pub(crate) fn join_chord(
        &self,
        msg: &TaskMessage,
        state: TaskState,
        result: &Value,
        unacked: Option<&str>,
    ) {
        let Some(part) = crate::canvas::chord::part(msg, state, result) else {
            return;
        };
        #[cfg(feature = "redis")]
        if let Some(crate::outbox::ResultStore::Redis(b)) = &self.control.backend {
            b.join(part, unacked.map(str::to_owned));
            return;
        }
        let _ = unacked;
        tracing::error!(
            "Chord {} cannot be joined: task {}[{}] is one of its parts, and \
             this worker's result backend has no chord join (a Redis result \
             backend has one); the chord's body will not run",
            crate::repr::cut(&part.group, crate::repr::LOG_NAME_MAX),
            crate::repr::cut(msg.headers.display_name(), crate::repr::LOG_NAME_MAX),
            crate::repr::cut(&part.task_id, crate::repr::LOG_NAME_MAX),
        );
    }

    /// Whether the result backend joins chords (a Redis backend does).
    pub(crate) fn joins_chords(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(crate::outbox::ResultStore::Redis(_)) = &self.control.backend {
            return true;
        }
        false
    }

    /// Sets the size of the chord of `group` in the result backend (as
    /// the client's `set_chord_size` does), before its parts are sent.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn set_chord_size(&self, group: &str, size: usize) {
        #[cfg(feature = "redis")]
        if let Some(crate::outbox::ResultStore::Redis(b)) = &self.control.backend {
            b.store_raw(
                crate::canvas::chord::JoinKeys::of(group).size,
                size.to_string(),
            );
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
        let Some(backend) = &self.control.backend else {
            return;
        };
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
        let config = &self.control.config;
        if config.result_extended {
            meta.name = Some(msg.headers.task.clone());
            meta.args = Some(msg.args.clone());
            meta.kwargs = Some(msg.kwargs.clone());
            meta.worker = Some(config.hostname.clone());
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
}
