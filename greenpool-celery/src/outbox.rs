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
use crate::broker::Publish;

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
    /// on Redis `again` pushed and the delivery acked, in that order (one
    /// atomic batch); `basic.reject` with requeue on AMQP.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn requeue(&self, tag: String, again: Publish) {
        match self {
            #[cfg(feature = "redis")]
            Outbox::Redis(b) => {
                b.push(again, Some(tag.clone()));
                b.ack(tag);
            }
            #[cfg(feature = "amqp")]
            Outbox::Amqp(o) => o.reject(tag),
        }
    }

    /// Queues a follow-up message (a retry, a chain step, a link), routed
    /// by its exchange and routing key: by the broker on AMQP, through
    /// kombu's binding tables on Redis. If no queue receives it, it is
    /// logged as an error and `origin`, the still unacked delivery it came
    /// from (a late-ack request's), stays unacked; an early-ack request's
    /// message was acked when its task started, and the follow-up is
    /// logged as lost.
    pub(crate) fn push(&self, p: Publish, origin: Option<&str>) {
        let origin = origin.map(str::to_owned);
        match self {
            #[cfg(feature = "redis")]
            Outbox::Redis(b) => b.push(p, origin),
            #[cfg(feature = "amqp")]
            Outbox::Amqp(o) => match crate::broker::amqp::amqp_from_publish(&p) {
                Ok(m) => o.follow_up(m, origin),
                Err(e) => tracing::error!(
                    "cannot send a follow-up to exchange {:?} with routing key {:?}: {e}",
                    p.exchange,
                    p.routing_key
                ),
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
