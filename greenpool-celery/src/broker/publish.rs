//! A message the worker sends on (a task's retry, the requeue of a
//! rejected message, link callbacks, the next chain step, link errors),
//! addressed as a producer addresses it: to an exchange with a routing
//! key. Each transport routes it its own way: AMQP hands both to the
//! broker; kombu's Redis transport resolves them to queues through the
//! exchange's binding table (see `redis::bindings`).

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    /// The exchange; `""` is the default exchange, which routes to the
    /// queue named by the routing key.
    pub(crate) exchange: String,
    /// The routing key.
    pub(crate) routing_key: String,
    /// The message priority (0–9), when it has one.
    pub(crate) priority: Option<u8>,
    /// The message as kombu's JSON envelope.
    pub(crate) message: String,
}

impl Publish {
    /// A message to the default exchange, for `queue`.
    pub(crate) fn to_queue(queue: &str, priority: Option<u8>, message: String) -> Self {
        Publish {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            priority,
            message,
        }
    }
}
