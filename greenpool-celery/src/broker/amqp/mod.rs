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
//! * The worker consumes with `basic.consume` under a `basic.qos` of
//!   concurrency × prefetch multiplier: global (the whole consumer
//!   channel) on classic queues, as Celery sets it on RabbitMQ 3.3 to 3.x,
//!   so that `pool_grow`/`pool_shrink`/autoscale move the broker's window
//!   at once; per consumer with quorum queues, which refuse global QoS. It
//!   acks when a task starts, or when it ends with acks_late; on warm
//!   shutdown it rejects with requeue what it prefetched but did not start
//!   ([`consumer`]).
//! * What the worker publishes (follow-ups, rpc:// results) is confirmed by
//!   the broker before the acks queued after it ([`outbox`]); results in
//!   a Redis backend (with the `redis` feature) are written before them
//!   too ([`results`]). A retry goes to the exchange and routing key its
//!   delivery came through, as Celery's `Task.retry` sends it; chain steps
//!   and links to the default exchange under their queue's name. Follow-ups
//!   are published mandatory: one the broker cannot route is logged, and
//!   the message it came from, if still unacked (late ack), is not acked.
//! * The connection asks for heartbeats and reconnects with the same
//!   backoff and retry settings as the Redis connection layer,
//!   re-declaring the topology and consumers ([`session`]).
//! * Remote control and events have a connection of their own
//!   ([`node_link`]): the node's queue `<hostname>.celery.pidbox` on the
//!   `celery.pidbox` fanout, replies through `reply.celery.pidbox`, events
//!   on the `celeryev` topic exchange; `greenpool inspect`/`control` speak
//!   the caller's side with a reply queue per call.
//!
//! # Left out, compared with Celery on AMQP
//!
//! * With quorum queues a new prefetch count (after `pool_grow`, or while
//!   an ETA request waits, which raises it by one as Celery's
//!   `QoS.increment_eventually` does) applies to the consumers made after
//!   it (the next reconnection), as per-consumer QoS does for Celery too.
//! * ETA on quorum queues is held unacked (as on classic queues); Celery
//!   5.5's native delayed delivery (its `celery_delayed_*` exchanges) is not
//!   declared or used.
//! * A late-ack task that returns [`TaskError::reject`](crate::TaskError::reject)
//!   with `requeue` gets `basic.reject` with requeue, as warm shutdown does
//!   for what was not started; without `requeue` its message is acked (no
//!   dead-letter exchange is declared, so a reject would drop it too).
//! * RabbitMQ 4's choice of per-consumer QoS on classic queues (kombu
//!   reads the server's version) is not made: the server's properties are
//!   not exposed by lapin, and global QoS is still accepted there.
//! * A message over `max_message_size` is failed (FAILURE stored under its
//!   correlation id, then acked) as on Redis, but only after the broker
//!   delivered it whole (the broker's own `max_message_size`, 128 MiB by
//!   default, bounds that).
//! * The Rust client uses a queue it sends to as it exists (a passive
//!   declare first), so it sends to queues the workers declared with
//!   `x-max-priority` or as quorum queues; a missing queue it declares
//!   without arguments, as a client without those settings does. Its
//!   rpc:// reply queue is
//!   declared again, under the same name, when the client reconnects to
//!   send; replies published while it was gone are lost, as with
//!   Celery's rpc:// backend.
//! * TLS takes the system's root certificates; client certificates
//!   (`broker_use_ssl` with `certfile`/`keyfile`) are not supported.
//! * The heartbeat is 60 s unless the URL names one (`?heartbeat=N`).

pub(crate) mod client;
pub(crate) mod consumer;
pub(crate) mod node_link;
pub(crate) mod outbox;
pub(crate) mod results;
pub(crate) mod session;
pub(crate) mod wire;

pub(crate) use self::outbox::AmqpOutbox;
pub(crate) use self::wire::amqp_from_publish;
