//! Celery's AMQP 0-9-1 transport (RabbitMQ) through lapin, as kombu's
//! py-amqp transport speaks it.
//!
//! * Topology: each consumed queue is durable and bound to a durable
//!   direct exchange of the same name with the queue name as routing key
//!   (`celery` → exchange `celery`, key `celery`); clients publish to the
//!   default exchange with the queue name. `x-max-priority` is set when
//!   `queue_max_priority` is, `x-queue-type: quorum` with `quorum_queues`.
//! * Task headers travel as AMQP application headers; `correlation_id`,
//!   `reply_to`, `priority`, `content_type` and `content_encoding` as
//!   properties ([`wire`]).
//! * The worker consumes with `basic.consume` under a per-consumer
//!   `basic.qos` of concurrency × prefetch multiplier (never global QoS,
//!   which quorum queues refuse); it acks when a task starts, or when it
//!   ends with acks_late; on warm shutdown it rejects with requeue what it
//!   prefetched but did not start ([`consumer`]).
//! * What the worker publishes (follow-ups, rpc:// results) is confirmed by
//!   the broker before the acks queued after it ([`outbox`]).
//! * The connection asks for heartbeats and reconnects with the same
//!   backoff and retry settings as the Redis connection layer,
//!   re-declaring the topology and consumers ([`session`]).

pub(crate) mod client;
pub(crate) mod consumer;
pub(crate) mod outbox;
pub(crate) mod session;
pub(crate) mod wire;

pub(crate) use self::outbox::AmqpOutbox;
pub(crate) use self::wire::amqp_from_envelope;
