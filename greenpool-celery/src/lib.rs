//! A Celery worker and client that speak kombu's Redis transport, so that
//! stock Python clients (`send_task`, `AsyncResult.get`) drive Rust tasks
//! run in a greenpool [`TaskPool`](greenpool::TaskPool), and Rust code can
//! call Python tasks.
//!
//! # Architecture
//!
//! A message travels through these parts:
//!
//! * [`protocol`](TaskMessage): the JSON envelope kombu pushes on a Redis
//!   list, its base64 body and the task headers, decoded into a
//!   [`TaskMessage`] (v1 converted to v2) and encoded back for the client.
//! * the connection layer: every Redis connection (broker, result
//!   backend, client, pub/sub) reconnects by itself with backoff and gives
//!   up after `broker_connection_max_retries` attempts.
//! * the broker: fetches from the queue lists (priority keys in kombu's
//!   order) with one atomic script that also records each message in the
//!   `unacked` hash and `unacked_index` until it is acked, and gives back
//!   messages of crashed workers after the visibility timeout.
//! * the registry: maps task names to async Rust functions whose
//!   arguments are decoded through serde.
//! * the worker: runs each request as a job in the pool and stores the
//!   outcome in the result backend (`celery-task-meta-<id>`, SET with EX +
//!   PUBLISH) in the shape Python's `AsyncResult` reads, then acks it: in
//!   that order, in batches.
//! * remote control: the worker answers Celery's pidbox commands
//!   (`celery inspect`, `celery control`, Flower) and sends events;
//!   [`Control`] is the client side.
//!
//! Each broker is a cargo feature, both on by default: `redis` (kombu's
//! Redis transport, the Redis result backend, remote control and events
//! over Redis) and `amqp` (AMQP 0-9-1 through lapin, and the rpc://
//! result backend). A URL of a broker or result backend left out of the
//! build is refused with [`BrokerError::NotCompiled`], naming the feature
//! to rebuild with; with neither feature only the protocol and task layer
//! ([`TaskMessage`], [`TaskRegistry`]) is built.
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
pub use client::{AsyncResult, Client, SendOptions};
pub use config::{
    host_name, node_name, AmqpOptions, ConnectionPolicy, Limits, RedisOptions, WorkerConfig,
    DEFAULT_MAX_MESSAGE_SIZE, WORKER_VARIABLES,
};
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
