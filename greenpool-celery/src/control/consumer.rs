//! `add_consumer` and `cancel_consumer`: start and stop consuming a queue
//! while running, as Celery's `Consumer.add_task_queue` and
//! `cancel_task_queue` do.
//!
//! The change is made to the node's [`ActiveQueues`](crate::broker::ActiveQueues)
//! before the reply: the Redis fetch reads that set at each fetch, so the
//! next fetch pops from the new set, and messages already fetched run as
//! usual; the AMQP consumer follows the set with `basic.consume` (after
//! declaring the queue, its exchange and the binding) and `basic.cancel`
//! (messages it holds unacked stay its own until they end). `add_consumer` also binds the queue to its exchange (defaults:
//! an exchange named as the queue, `direct`, routing key = queue name),
//! in the background; `active_queues` lists the set as it is now.

use std::sync::Arc;

use serde_json::json;

use super::node::Node;
use super::table::{Answer, Args};
use crate::broker::ConsumedQueue;

/// The `queue` argument, required as Celery's signature has it.
fn queue<'a>(command: &str, args: &'a Args<'_>) -> Result<&'a str, String> {
    match args.str("queue") {
        Some(q) if !q.is_empty() => Ok(q),
        _ => Err(format!(
            "TypeError(\"{command}() missing 1 required positional argument: 'queue'\")"
        )),
    }
}

/// `add_consumer`: consume `queue` from the next fetch on. Answers
/// `{"ok": "add consumer <queue>"}`, also when it is consumed already.
// Without the `amqp` feature Redis is the only wire, and the `if let`
// below always matches.
#[cfg_attr(
    all(feature = "redis", not(feature = "amqp")),
    allow(irrefutable_let_patterns)
)]
pub(crate) fn add_consumer(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let name = queue("add_consumer", args)?;
    let q = ConsumedQueue::new(
        name,
        args.str("exchange"),
        args.str("exchange_type"),
        args.str("routing_key"),
    );
    if node.queues.add(q.clone()) {
        tracing::info!("Started consuming from {name}");
        // On AMQP the consumer declares and binds the queue itself when it
        // starts consuming it.
        #[cfg(feature = "redis")]
        if let super::NodeWire::Redis { link, .. } = node.wire.clone() {
            tokio::spawn(async move {
                if let Err(e) = crate::broker::bind(&link, std::slice::from_ref(&q)).await {
                    tracing::error!(
                        "cannot bind queue {} to exchange {}: {e}; messages published to the \
                         exchange may not reach it (publishing to the queue by name still does)",
                        q.name,
                        q.exchange
                    );
                }
            });
        }
    }
    Ok(Some(json!({"ok": format!("add consumer {name}")})))
}

/// `cancel_consumer`: stop consuming `queue` from the next fetch on;
/// messages left in it stay there. Answers `{"ok": "no longer consuming
/// from <queue>"}`.
pub(crate) fn cancel_consumer(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let name = queue("cancel_consumer", args)?;
    tracing::info!("Canceling queue {name}");
    node.queues.cancel(name);
    Ok(Some(
        json!({"ok": format!("no longer consuming from {name}")}),
    ))
}
