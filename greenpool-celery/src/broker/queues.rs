//! The queues a worker consumes, changed at run time by `add_consumer`
//! and `cancel_consumer`: the Redis fetch reads the current set at each
//! fetch, so a change takes effect on the next one, and messages already
//! fetched are not touched.

use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{json, Value};

/// One consumed queue, declared as Celery declares
/// `Queue(name, Exchange(exchange, type), routing_key=routing_key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumedQueue {
    pub(crate) name: String,
    pub(crate) exchange: String,
    pub(crate) exchange_type: String,
    pub(crate) routing_key: String,
    /// The name as a JSON string, as the unacked entries carry it.
    pub(crate) json: String,
}

impl ConsumedQueue {
    /// Celery's defaults for a queue named `name`: a direct exchange and a
    /// routing key of the same name.
    pub(crate) fn named(name: &str) -> Self {
        Self::new(name, None, None, None)
    }

    /// A queue with the exchange (default: the queue's name), exchange
    /// type (default `direct`) and routing key (default: the queue's
    /// name) of `add_consumer`.
    pub(crate) fn new(
        name: &str,
        exchange: Option<&str>,
        exchange_type: Option<&str>,
        routing_key: Option<&str>,
    ) -> Self {
        ConsumedQueue {
            name: name.to_owned(),
            exchange: exchange.unwrap_or(name).to_owned(),
            exchange_type: exchange_type.unwrap_or("direct").to_owned(),
            routing_key: routing_key
                .filter(|r| !r.is_empty())
                .unwrap_or(name)
                .to_owned(),
            json: Value::String(name.to_owned()).to_string(),
        }
    }

    /// kombu's `Queue.as_dict(recurse=True)`, as `active_queues` answers.
    pub(crate) fn as_dict(&self) -> Value {
        json!({
            "name": self.name,
            "exchange": {"name": self.exchange, "type": self.exchange_type, "arguments": null,
                "durable": true, "passive": false, "auto_delete": false,
                "delivery_mode": null, "no_declare": false},
            "routing_key": self.routing_key,
            "queue_arguments": null, "binding_arguments": null, "consumer_arguments": null,
            "durable": true, "exclusive": false, "auto_delete": false, "no_ack": false,
            "alias": null, "bindings": [], "no_declare": null, "expires": null,
            "message_ttl": null, "max_length": null, "max_length_bytes": null,
            "max_priority": null,
        })
    }
}

/// The set of consumed queues, in consume order.
#[derive(Debug)]
pub(crate) struct ActiveQueues {
    current: RwLock<Arc<Vec<ConsumedQueue>>>,
    /// Bumped at every change, for a consumer that follows the set (AMQP).
    changes: tokio::sync::watch::Sender<u64>,
}

impl ActiveQueues {
    /// The queues named with `-Q`, with Celery's defaults.
    pub(crate) fn new(names: &[String]) -> Self {
        ActiveQueues {
            current: RwLock::new(Arc::new(
                names.iter().map(|n| ConsumedQueue::named(n)).collect(),
            )),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// A receiver that sees every change of the set.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The queues now (a snapshot; later changes make a new one).
    pub(crate) fn snapshot(&self) -> Arc<Vec<ConsumedQueue>> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Starts consuming `queue`; false (and no change) when a queue of
    /// that name is consumed already.
    pub(crate) fn add(&self, queue: ConsumedQueue) -> bool {
        let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if cur.iter().any(|q| q.name == queue.name) {
            return false;
        }
        let mut next = Vec::clone(&cur);
        next.push(queue);
        *cur = Arc::new(next);
        drop(cur);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        true
    }

    /// Stops consuming the queue named `name`; false when it was not
    /// consumed.
    pub(crate) fn cancel(&self, name: &str) -> bool {
        let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if !cur.iter().any(|q| q.name == name) {
            return false;
        }
        let next: Vec<ConsumedQueue> = cur.iter().filter(|q| q.name != name).cloned().collect();
        *cur = Arc::new(next);
        drop(cur);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_cancel_change_the_snapshot() {
        let qs = ActiveQueues::new(&["celery".to_owned()]);
        let before = qs.snapshot();
        assert!(qs.add(ConsumedQueue::new("q2", Some("ex"), None, Some("rk"))));
        assert!(!qs.add(ConsumedQueue::named("q2")));
        let names: Vec<_> = qs.snapshot().iter().map(|q| q.name.clone()).collect();
        assert_eq!(names, ["celery", "q2"]);
        assert_eq!(before.len(), 1, "a snapshot taken before does not change");
        let q2 = &qs.snapshot()[1];
        assert_eq!(
            (
                q2.exchange.as_str(),
                q2.exchange_type.as_str(),
                q2.routing_key.as_str()
            ),
            ("ex", "direct", "rk")
        );
        assert!(qs.cancel("celery"));
        assert!(!qs.cancel("celery"));
        assert_eq!(qs.snapshot()[0].name, "q2");
        assert_eq!(qs.snapshot()[0].json, "\"q2\"");
    }
}
