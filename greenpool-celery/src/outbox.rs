//! Where a worker's writes go, whatever the broker: acks, follow-up
//! messages and (through [`ResultStore`]) results. On Redis they go through
//! the [`Batcher`]'s atomic batches; on AMQP through the AMQP outbox's
//! confirmed rounds. Both keep the order "store, then ack".

use std::sync::Arc;

#[cfg(feature = "redis")]
use crate::backend::RedisBackend;
use crate::backend::ResultMeta;
#[cfg(feature = "amqp")]
use crate::broker::amqp::AmqpOutbox;
#[cfg(feature = "redis")]
use crate::broker::redis::batch::Batcher;

/// The worker's writer on its broker.
#[derive(Debug, Clone)]
pub(crate) enum Outbox {
    /// kombu's Redis transport.
    #[cfg(feature = "redis")]
    Redis(Arc<Batcher>),
    /// AMQP.
    #[cfg(feature = "amqp")]
    Amqp(Arc<AmqpOutbox>),
}

impl Outbox {
    /// Queues the ack of a delivery.
    pub(crate) fn ack(&self, tag: String) {
        match self {
            #[cfg(feature = "redis")]
            Outbox::Redis(b) => b.ack(tag),
            #[cfg(feature = "amqp")]
            Outbox::Amqp(o) => o.ack(tag),
        }
    }

    /// Puts a delivered message back on its queue (a requeueing reject):
    /// on Redis `payload` pushed on `key` and the delivery acked, in that
    /// order (one atomic batch); `basic.reject` with requeue on AMQP.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn requeue(&self, tag: String, key: String, payload: String) {
        match self {
            #[cfg(feature = "redis")]
            Outbox::Redis(b) => {
                b.push(key, payload);
                b.ack(tag);
            }
            #[cfg(feature = "amqp")]
            Outbox::Amqp(o) => o.reject(tag),
        }
    }

    /// Queues a follow-up message (a retry, a chain step, a link): its
    /// Redis queue key and kombu envelope. On AMQP the envelope's
    /// `delivery_info` (exchange and routing key) and priority route it,
    /// and `origin`, the still unacked delivery it came from (a late-ack
    /// request's), stays unacked if the broker cannot route it. On Redis
    /// a push cannot be refused alone (it is written in an atomic batch no
    /// later than the ack's): `origin` is not needed there.
    #[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
    pub(crate) fn push(&self, key: String, payload: String, origin: Option<&str>) {
        match self {
            #[cfg(feature = "redis")]
            Outbox::Redis(b) => b.push(key, payload),
            #[cfg(feature = "amqp")]
            Outbox::Amqp(o) => match crate::broker::amqp::amqp_from_envelope(&payload) {
                Ok(m) => o.follow_up(m, origin.map(str::to_owned)),
                Err(e) => tracing::error!("cannot send a follow-up to {key:?}: {e}"),
            },
        }
    }
}

/// Where results are stored.
#[derive(Debug, Clone)]
pub(crate) enum ResultStore {
    /// Celery's Redis backend.
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
    /// Celery's rpc:// backend: a message to the client's `reply_to`.
    #[cfg(feature = "amqp")]
    Rpc(Arc<AmqpOutbox>),
}

impl ResultStore {
    /// Whether results stored here are found by task id alone (a Redis
    /// backend), so that remote control can store REVOKED for a revoke by
    /// id; rpc:// results go to each request's `reply_to` only.
    pub(crate) fn by_id(&self) -> bool {
        match self {
            #[cfg(feature = "redis")]
            ResultStore::Redis(_) => true,
            #[cfg(feature = "amqp")]
            ResultStore::Rpc(_) => false,
        }
    }

    /// Queues `meta` for storing; `reply_to` is the request's reply queue
    /// (the rpc backend sends nothing without one, as Celery's does).
    #[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
    pub(crate) fn store(&self, meta: &ResultMeta, reply_to: Option<&str>) {
        match self {
            #[cfg(feature = "redis")]
            ResultStore::Redis(b) => b.store(meta),
            #[cfg(feature = "amqp")]
            ResultStore::Rpc(o) => match reply_to {
                Some(r) if !r.is_empty() => match crate::backend::rpc::reply(meta, r) {
                    Ok(m) => o.publish(m),
                    Err(e) => tracing::error!("cannot encode the result of {}: {e}", meta.task_id),
                },
                _ => tracing::debug!("task {} has no reply_to: no rpc result sent", meta.task_id),
            },
        }
    }
}
