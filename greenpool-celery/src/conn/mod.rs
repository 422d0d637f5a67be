//! The connection layer: every Redis connection of the worker, the result
//! backend and the client goes through a [`Link`], which reconnects by
//! itself.
//!
//! The links, their fault sorting and the subscriber need the `redis`
//! feature; [`LinkSettings`] and [`Backoff`] are always built, since the
//! AMQP sessions connect, retry and give up on the same policy.
//!
//! # What a link does
//!
//! * Opens one multiplexed connection with a connect timeout, TCP
//!   keepalive (probes after 60 s idle, or the `health_check_interval`
//!   of the transport options, then every 10 s) and `TCP_NODELAY`,
//!   then runs its start-up hook (the broker loads its Lua scripts there,
//!   so a restarted server gets them back before the first command).
//! * Runs each command or pipeline under the command timeout: a reply
//!   that does not come counts as a lost connection, which also catches a
//!   peer that stalls without closing (keepalive alone does not).
//! * Sorts failures ([`Fault`]): a lost connection (dropped, refused,
//!   timed out) marks the link down and logs it once; a busy server
//!   (`LOADING`, `BUSY`, `OOM`, `READONLY`, `TRYAGAIN`, `MASTERDOWN`) is
//!   retried on the same connection; `NOSCRIPT` reloads the scripts; any
//!   other error belongs to the command.
//! * [`Link::recover`] reconnects with exponential backoff and jitter,
//!   logging one line per state change: `lost`, `retrying in N s`,
//!   `restored after N s`. It gives up after
//!   `broker_connection_max_retries` attempts (or at once when
//!   `broker_connection_retry` is off), and from then on every call fails,
//!   so the worker stops with an error and its supervisor restarts it.
//!   Concurrent callers share one reconnection.
//!
//! Nothing is blocking on a link: the worker fetches with a script that
//! returns at once and sleeps between polls while the queues are empty,
//! so every command has a timeout and shutdown never waits on Redis.
//!
//! # Sentinel and replicas
//!
//! A `sentinel://` URL gives the link a `SentinelTarget` (`sentinel.rs`):
//! each connection asks the sentinels for the master and checks its
//! `ROLE`; a watcher on every sentinel holds the link's calls from a
//! replica's promotion to the `+switch-master` that announces it (so no
//! write lands on a master being demoted), after which the link
//! reconnects to the announced master; `READONLY` and `MASTERDOWN` count
//! as a lost connection there. With `sync_replicas` set,
//! [`Link::write_until_done`] follows each batch with `WAIT` in the same
//! round trip, and a batch too few replicas confirm is written again on a
//! new connection.
//!
//! # Pub/sub
//!
//! [`Subscriber`] is the reconnecting subscriber for listeners (result
//! waits today; remote control's pidbox later): it keeps its channel and
//! pattern lists, and after a loss it reconnects on the same policy,
//! subscribes again and yields [`SubscriberEvent::Resubscribed`] so the
//! caller can re-read whatever was published while it was away (pub/sub
//! keeps nothing for absent subscribers).

mod backoff;
#[cfg(feature = "redis")]
mod fault;
#[cfg(feature = "redis")]
pub(crate) mod link;
#[cfg(feature = "redis")]
mod sentinel;
mod settings;
#[cfg(feature = "redis")]
mod subscriber;
#[cfg(feature = "redis")]
pub(crate) mod tls;

pub(crate) use backoff::Backoff;
#[cfg(feature = "redis")]
pub(crate) use fault::Fault;
#[cfg(feature = "redis")]
pub(crate) use link::Link;
pub(crate) use settings::LinkSettings;
#[cfg(feature = "redis")]
#[allow(unused_imports)] // used by the client's result waits and by remote control
pub(crate) use subscriber::{Subscriber, SubscriberEvent};
#[cfg(feature = "redis")]
pub use tls::redis_client;
