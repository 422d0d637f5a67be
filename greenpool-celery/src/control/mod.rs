//! Celery's remote control (kombu's pidbox) for the worker: `celery
//! inspect`, `celery control`, `app.control.*` and Flower reach it.
//!
//! # Path of a command
//!
//! 1. The caller publishes on the fanout exchange `celery.pidbox`. On
//!    Redis that is a kombu envelope PUBLISHed on `/{db}.celery.pidbox`,
//!    where the mailbox ([`mailbox`]) is PSUBSCRIBEd through the
//!    connection layer's reconnecting subscriber; on AMQP the node's queue
//!    `<hostname>.celery.pidbox` receives it. [`NodeWire`] holds the
//!    node's connection of either kind, for requests, replies and events.
//! 2. The body ([`message`]) names the `method`, its `arguments`, and
//!    who it is for (`destination`, or `pattern` + `matcher`); requests
//!    for other nodes are ignored.
//! 3. The handler is looked up in the command table ([`table`]); each
//!    concern has its file: [`inspect`] (read-only), [`revoke`],
//!    [`pool`] (grow, shrink, autoscale), [`limits`] (rate and time
//!    limits), [`events_cmd`], [`consumer`], [`shutdown`].
//! 4. With `reply_to`, the answer `{node: value}` goes to the exchange
//!    `reply.celery.pidbox` under the caller's key, with the request's
//!    `ticket` (on Redis: LPUSHed on the lists bound there, [`reply`]). Handler errors answer
//!    `{"error": "<repr>"}`; an unknown command `KeyError('<name>')`.
//!
//! The state the commands read and steer lives in [`Node`]: held
//! requests by phase ([`requests`]), the revoked ids ([`revoked`]), the
//! prefetch window ([`prefetch`]), rate limits ([`rate_limit`]), the
//! autoscaler ([`autoscale`]), and every count of a request and the task
//! events ([`recorder`]). The node is also the one home of the worker's
//! settings, registry, pool, result store, name and warm shutdown. The
//! request path calls into it through [`hooks`]. [`Control`] is the client side, for Rust programs and the
//! `greenpool inspect` / `greenpool control` commands.

mod autoscale;
mod client;
mod consumer;
#[cfg(feature = "redis")]
pub(crate) mod envelope;
mod events_cmd;
pub(crate) mod hooks;
mod inspect;
mod limits;
mod mailbox;
mod message;
mod node;
mod pool;
mod prefetch;
mod rate_limit;
pub(crate) mod recorder;
#[cfg(feature = "redis")]
mod reply;
mod requests;
mod revoke;
mod revoked;
mod rusage;
mod service;
mod shutdown;
mod table;
mod wire;

pub use client::{Control, ControlOptions, Replies};
pub(crate) use node::{Node, NodeParts};
pub(crate) use service::Service;
pub(crate) use wire::NodeWire;
