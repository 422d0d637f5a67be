//! A Celery worker and client on kombu's Redis transport and on AMQP
//! (RabbitMQ), so that stock Python clients (`send_task`,
//! `AsyncResult.get`, `celery inspect`/`control`, `celery events`, Flower)
//! drive Rust tasks run in a greenpool [`TaskPool`](greenpool::TaskPool),
//! and Rust code can call Python tasks.
//!
//! # One task, fetch to ack
//!
//! Follow one message through the worker (file names in brackets, under
//! `src/`):
//!
//! 1. **Start.** [`Worker::run`] (`worker/mod.rs`) picks the transport by
//!    the URL's scheme and hands it to the one lifecycle
//!    (`worker/lifecycle.rs`): connect the transport (the narrow
//!    `WorkerTransport` trait, `broker/transport.rs`), start the pool, the
//!    remote-control node (`control/node.rs`) and its service, then
//!    consume. Settings come from [`WorkerConfig`] (`config/`).
//! 2. **Fetch.** The transport's `next` hands out deliveries
//!    (`broker/delivery.rs`: queue, tag, envelope; the message as its
//!    transport carried it, `broker/received.rs`, is kept for the retry,
//!    the requeue and the listing). Redis
//!    (`broker/redis/consumer.rs`) fetches within the prefetch budget with
//!    one atomic script (`broker/redis/fetch.rs`, `lua/take.lua`); AMQP
//!    (`broker/amqp/consumer.rs`) takes what the broker delivers under
//!    `basic.qos` and reads it into the envelope's fields
//!    (`broker/amqp/wire.rs`). The lifecycle spawns one request handler per delivery.
//! 3. **Decode** (`request/decode.rs`, over `protocol/`): the envelope and
//!    body become a [`TaskMessage`]; its task is looked up in the
//!    [`TaskRegistry`] (`registry.rs`) and its time limits checked. A
//!    message that can never run is failed and acked here.
//! 4. **Revoked or expired** (`request/expiry.rs`,
//!    `control/hooks.rs::received`), then **ETA** (`request/eta.rs`, the
//!    pool's green timer), then the **rate limit** (`control/rate_limit.rs`).
//! 5. **Admit** (`request/admit.rs`): the request becomes a pool job with
//!    its [`TaskContext`] (`context.rs`); the accept callback acks an
//!    early-ack request and lists it active; the pool runs the task.
//! 6. **Settle.** The job's outcome is decided by a pure function
//!    (`request/outcome.rs`: SUCCESS, RETRY, REVOKED, REJECT, FAILURE, and
//!    every write each needs) and applied in one place
//!    (`request/settle.rs`): the counts through the recorder
//!    (`control/recorder.rs`: report, `inspect stats`, metrics, events),
//!    the result (`backend/`), a chord part's join (`canvas/chord.rs`),
//!    follow-ups (`request/follow_up.rs`, `request/retry.rs`; chains,
//!    groups and chords applied in `canvas/apply.rs`; each a
//!    transport-neutral publish, `broker/publish.rs`), then the ack or
//!    requeue. Celery's built-in tasks (`celery.map`, ...) are in
//!    `canvas/builtins.rs`.
//! 7. **Store, then ack.** Writes go through the transport's writer
//!    (`outbox.rs`): on Redis one atomic script per batch writes results
//!    and follow-ups before the acks (`broker/redis/batch.rs`), joining
//!    chord parts between the two (`broker/redis/chord.rs`); on AMQP
//!    publishes are confirmed before the acks go out
//!    (`broker/amqp/outbox.rs`).
//! 8. **Stop.** Warm shutdown stops fetching, lets running jobs finish,
//!    flushes, gives back what is still unacked and closes
//!    (`worker/lifecycle.rs`, once for every transport).
//!
//! Every connection reconnects by itself with backoff (`conn/` for Redis,
//! `broker/amqp/session.rs` for AMQP). A Redis link reaches its server
//! directly, over TLS (`conn/tls.rs`) or through Redis Sentinel
//! (`conn/sentinel.rs`: the master asked for on each connection, calls
//! held through a failover, `WAIT` for `sync_replicas`); the key names
//! kombu's transport options change are in `config/redis_keys.rs`.
//! `RELIABILITY.md` lists the faults survived and their tests.
//!
//! # Where a change goes
//!
//! * **A new transport:** implement `WorkerTransport`
//!   (`broker/transport.rs`) in `broker/<name>/`, add its scheme to
//!   `broker/mod.rs::Transport` and its writer to `outbox.rs`; the
//!   lifecycle, the request path and remote control stay as they are.
//! * **A new remote-control command:** a handler in `control/` and a line
//!   in its table (`control/table.rs`); [`Control`] (`control/client.rs`)
//!   sends any command by name.
//! * **A new outcome** (or a change to what one writes): the decision in
//!   `request/outcome.rs`, with a unit test in `request/outcome_tests.rs`;
//!   its writes in `request/settle.rs`; the counter and event it records
//!   in `outcome.rs` (shared with remote control), its counts in
//!   `control/recorder.rs`.
//! * **A new canvas form:** its application in `canvas/apply.rs` (pure,
//!   tested in `canvas/apply_tests.rs`); what a chord's join decides in
//!   `canvas/chord.rs`, what it writes in `broker/redis/chord.rs`.
//! * **A new setting:** a field of [`WorkerConfig`] or of its group
//!   (`config/`), its rule in `WorkerConfig::validate`, its variable in
//!   `config/env.rs`.
//!
//! Each broker is a cargo feature, both on by default: `redis` (kombu's
//! Redis transport, the Redis result backend, remote control and events
//! over Redis) and `amqp` (AMQP 0-9-1 through lapin, and the rpc://
//! result backend). A URL of a broker or result backend left out of the
//! build is refused with [`BrokerError::NotCompiled`], naming the feature
//! to rebuild with; with neither feature only the protocol and task layer
//! ([`TaskMessage`], [`TaskRegistry`]) is built. The `fault-injection`
//! feature (test builds only) adds the hooks the fault tests use.
#![doc(test(attr(deny(warnings))))]
// Without a broker feature only the protocol and task layer is built (no
// worker, client or remote control): the broker-neutral parts they share
// are left unused, and the docs' links to them lead nowhere.
#![cfg_attr(
    not(any(feature = "redis", feature = "amqp")),
    allow(dead_code, unused_imports, rustdoc::broken_intra_doc_links)
)]

pub mod backend;
mod broker;
mod canvas;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod client;
mod config;
mod conn;
mod context;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod control;
mod error;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod events;
mod metrics;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod outbox;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod outcome;
pub mod protocol;
mod registry;
mod repr;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod request;
pub mod seconds;
mod stats;
mod task_error;
mod uuid;
#[cfg(any(feature = "redis", feature = "amqp"))]
mod worker;

pub use self::uuid::uuid4;
pub use backend::{result_key, ResultMeta, TaskState};
#[cfg(any(feature = "redis", feature = "amqp"))]
pub use client::{AsyncResult, CanvasResult, Client, ClientOptions, GroupResult, SendOptions};
pub use config::{
    host_name, node_name, AmqpOptions, ConnectionPolicy, Limits, QueueOrder, RedisKeys,
    RedisOptions, SentinelOptions, SocketOptions, TransportOptions, WorkerConfig,
    DEFAULT_MAX_MESSAGE_SIZE, WORKER_VARIABLES,
};
#[cfg(feature = "redis")]
pub use conn::redis_client;
pub use context::TaskContext;
#[cfg(any(feature = "redis", feature = "amqp"))]
pub use control::{Control, ControlOptions, Replies};
pub use error::{BrokerError, ConfigError, ProtocolError, ResultError, WorkerError};
pub use metrics::WorkerMetrics;
pub use protocol::{
    DeliveryInfo, Embed, Envelope, Properties, Signature, TaskHeaders, TaskMessage, TimeLimit,
    Timestamp,
};
pub use registry::{RegisteredTask, TaskFn, TaskFuture, TaskOptions, TaskRegistry};
#[allow(deprecated)]
pub use stats::{BrokerStats, RedisStats};
pub use task_error::TaskError;
#[cfg(any(feature = "redis", feature = "amqp"))]
pub use worker::{ShutdownHandle, Worker, WorkerReport};
