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
//!
//! # Left out, compared with Celery on AMQP
//!
//! * The prefetch count is set once from concurrency × multiplier; it does
//!   not follow `pool_grow`/`pool_shrink`/autoscale (the worker exposes
//!   none of them yet), and it is not raised while an ETA request waits
//!   (Celery's `QoS.increment_eventually`): many waiting ETA requests can
//!   fill the window.
//! * ETA on quorum queues is held unacked (as on classic queues); Celery
//!   5.5's native delayed delivery (its `celery_delayed_*` exchanges) is not
//!   declared or used.
//! * A late-ack task that returns [`TaskError::reject`](crate::TaskError::reject)
//!   with `requeue` gets `basic.reject` with requeue, as warm shutdown does
//!   for what was not started; without `requeue` its message is acked (no
//!   dead-letter exchange is declared, so a reject would drop it too).
//! * Remote control (`celery.pidbox`) and events (`celeryev`) are not yet
//!   available on AMQP: the worker says so once at start (also when `-E`
//!   asks for task events), `celery inspect`/`celery control`, `celery
//!   events` and Flower do not see it, and it sends no worker or task
//!   events. Revoked ids, rate limits and time limits still apply to the
//!   worker's own requests (its node is local, without a connection).
//! * `max_message_size` is not checked on AMQP (the broker's own
//!   `max_message_size`, 128 MiB by default, applies).
//! * The Rust client declares the queues it sends to without arguments, so
//!   it cannot send to a queue declared with `x-max-priority` or as a quorum
//!   queue; its rpc:// reply queue is not declared again after a
//!   reconnection.
//! * TLS takes the system's root certificates; client certificates
//!   (`broker_use_ssl` with `certfile`/`keyfile`) are not supported.
//! * The heartbeat is 60 s unless the URL names one (`?heartbeat=N`).

pub(crate) mod client;
pub(crate) mod consumer;
pub(crate) mod outbox;
pub(crate) mod session;
pub(crate) mod wire;

pub(crate) use self::outbox::AmqpOutbox;
pub(crate) use self::wire::amqp_from_envelope;
