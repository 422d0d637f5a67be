//! [`WorkerTransport`]: the narrow face a broker shows the worker's
//! lifecycle (`worker/lifecycle.rs`), which sets the worker up, consumes
//! and stops it the same way on every transport.
//!
//! A transport connects, hands out deliveries ([`WorkerTransport::next`]:
//! the Redis transport fetches within the prefetch budget, backs off while
//! idle and recovers its link inside; the AMQP one consumes under
//! `basic.qos`, follows the window and the consumed queues, and reconnects
//! inside), gives back what is still unacked at shutdown, flushes and
//! closes. The request path acks, requeues and publishes through the
//! transport's writer, the [`Outbox`] its [`WorkerTransport::outbox`]
//! hands out.
//!
//! The lifecycle is generic over the trait (monomorphised per transport):
//! no dynamic dispatch on the per-message path.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{ActiveQueues, Delivery, Oversized};
use crate::config::WorkerConfig;
use crate::control::Node;
use crate::error::{BrokerError, WorkerError};
use crate::metrics::WorkerMetrics;
use crate::outbox::{Outbox, ResultStore};
use crate::stats::BrokerStats;

/// What a transport is given to connect.
#[derive(Debug)]
pub(crate) struct Connect<'a> {
    /// The worker's settings.
    pub(crate) config: &'a WorkerConfig,
    /// The queues consumed, shared with remote control (`add_consumer`,
    /// `cancel_consumer`); the Redis fetch reads them (AMQP follows the
    /// node's, the same set, in `next`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) queues: &'a Arc<ActiveQueues>,
    /// The traffic counters.
    pub(crate) stats: &'a Arc<BrokerStats>,
    /// The Prometheus metrics (reconnect counters).
    pub(crate) metrics: &'a Arc<WorkerMetrics>,
    /// Warm shutdown: background tasks of the transport (Redis's sweep
    /// and liveness refresh) stop on it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) warm: &'a CancellationToken,
}

/// What [`WorkerTransport::next`] reads on each call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Feed<'a> {
    /// The node: the prefetch window and the consumed queues, as remote
    /// control moves them.
    pub(crate) node: &'a Node,
    /// Warm shutdown: `next` returns `Ok(None)` once it is cancelled.
    pub(crate) warm: &'a CancellationToken,
}

/// A message refused unread for its size: a FAILURE is stored for it
/// where its id is known, then `ack` (if any) is acked.
#[derive(Debug)]
pub(crate) struct Refused {
    /// The message as the transport measured it.
    pub(crate) oversized: Oversized,
    /// Where an rpc:// result goes (AMQP's `reply_to`).
    pub(crate) reply_to: Option<String>,
    /// The delivery to ack once its FAILURE is queued (AMQP); `None` when
    /// the transport removed it already (Redis removes it inside the
    /// fetch).
    pub(crate) ack: Option<String>,
}

impl From<Oversized> for Refused {
    fn from(oversized: Oversized) -> Self {
        Refused {
            oversized,
            reply_to: None,
            ack: None,
        }
    }
}

/// Prefetch permits taken by the transport for a round of deliveries
/// (Redis, which counts the window itself; on AMQP the broker does).
#[derive(Debug)]
pub(crate) struct Permits {
    /// The permit held for the first delivery.
    pub(crate) first: OwnedSemaphorePermit,
    /// The window the others try to take a permit from.
    pub(crate) window: Arc<Semaphore>,
}

/// What one [`WorkerTransport::next`] call took.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// The messages to handle, in order.
    pub(crate) deliveries: Vec<Delivery>,
    /// Messages refused for their size.
    pub(crate) refused: Vec<Refused>,
    /// The prefetch permits of `deliveries`, when the transport counts the
    /// window.
    pub(crate) permits: Option<Permits>,
}

/// A broker as the worker's lifecycle drives it.
///
/// Connecting declares what the transport needs and starts its own
/// background work; everything else (the pool, remote control, the
/// request path, the stopping sequence) is the lifecycle's.
pub(crate) trait WorkerTransport: Sized {
    /// Connects to the broker of `how.config` (retrying as the
    /// connection settings allow), declares the queues, and opens the
    /// writer and the result store.
    async fn connect(how: Connect<'_>) -> Result<Self, WorkerError>;

    /// Where it connected, for the log line (no credentials on AMQP).
    fn label(&self) -> &str;

    /// The writer the request path acks, requeues and publishes through.
    fn outbox(&self) -> Outbox;

    /// The result store (`None` without a result backend).
    fn results(&self) -> Option<ResultStore>;

    /// The next deliveries: `Ok(None)` at warm shutdown; `Err` once the
    /// broker is gone for good (reconnecting gave up). Cancel safe only
    /// at warm shutdown, which it watches itself.
    async fn next(&mut self, feed: Feed<'_>) -> Result<Option<Taken>, BrokerError>;

    /// Waits until every write queued so far is made (at shutdown, after
    /// the background work of the transport stopped).
    async fn flush(&mut self);

    /// Set once the writer gave up for good.
    fn failure(&self) -> Option<BrokerError>;

    /// Gives an unacked delivery back to its queue at shutdown (at its
    /// front on Redis; `basic.reject` with requeue on AMQP). `Ok(true)`
    /// when it went back.
    async fn give_back(&self, tag: String) -> Result<bool, BrokerError>;

    /// Stops the writer and closes the connections; `gone`: the broker
    /// was lost, so nothing more is written.
    async fn close(self, gone: bool);
}
