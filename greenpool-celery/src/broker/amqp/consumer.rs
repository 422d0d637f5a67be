//! The worker's transport on AMQP: consume with `basic.consume` under
//! `basic.qos`, follow the prefetch window and the consumed queues as
//! remote control moves them, reconnect when the connection breaks, and on
//! shutdown give back (reject with requeue) what was prefetched but never
//! started. The worker's lifecycle drives it through [`WorkerTransport`].
//!
//! The broker enforces the prefetch window (concurrency × multiplier
//! unacked messages per consumer), so the consumer takes every delivery as
//! it comes. A delivery is named `<generation>:<tag>`, so that acks of a
//! connection that broke are dropped instead of acking an unrelated
//! message on the next one: the broker requeued those messages itself.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::watch;

use super::outbox::AmqpOutbox;
use super::results::ResultsBatcher;
use super::session::{Live, Session, Topology};
use super::wire::{envelope_from_amqp, Incoming};
use crate::broker::transport::{Connect, Feed, Refused, Taken, WorkerTransport};
use crate::broker::{Delivery, Oversized, Transport};
use crate::config::WorkerConfig;
use crate::conn::LinkSettings;
use crate::control::Node;
use crate::error::{BrokerError, WorkerError};
use crate::outbox::{Outbox, ResultStore};
use crate::stats::BrokerStats;

/// Whether `url` names the rpc:// backend (or the AMQP broker itself,
/// which Celery reads the same way).
fn is_rpc(url: &str) -> bool {
    url.starts_with("rpc://") || matches!(Transport::of(url), Ok(Transport::Amqp))
}

/// Most deliveries already received that one [`WorkerTransport::next`]
/// hands out together.
const MAX_TAKEN: usize = 64;

/// A worker's connection to an AMQP broker.
#[derive(Debug)]
pub(crate) struct AmqpTransport {
    /// The reconnecting broker connection.
    session: Arc<Session>,
    /// Its current connection, consumed on.
    live: Arc<Live>,
    /// The writer: publishes confirmed before the acks queued after them.
    outbox: Arc<AmqpOutbox>,
    /// A Redis result backend's batcher, flushed by the outbox before its
    /// acks.
    results_batcher: Option<Arc<ResultsBatcher>>,
    /// rpc:// replies or the Redis backend, if any.
    results: Option<ResultStore>,
    /// Counts deliveries.
    stats: Arc<BrokerStats>,
    /// The worker's settings (queues, limits, the node name).
    config: WorkerConfig,
    /// The consumers on `live`; `None` until they are started on it.
    consuming: Option<Consuming>,
}

/// A delivery with the name of the queue it was consumed from: the
/// broker's delivery carries the exchange and routing key only, and the
/// routing key names the queue only on the default exchange.
type FromQueue = (Arc<str>, Result<lapin::message::Delivery, lapin::Error>);

/// One consumer's deliveries, each named by the queue it consumes.
struct QueueStream {
    /// The queue.
    queue: Arc<str>,
    /// Its consumer.
    consumer: lapin::Consumer,
}

/// The consumer of `queue`, its deliveries named by it.
fn from_queue(queue: &str, consumer: lapin::Consumer) -> QueueStream {
    QueueStream {
        queue: Arc::from(queue),
        consumer,
    }
}

impl futures::Stream for QueueStream {
    type Item = FromQueue;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<FromQueue>> {
        let this = &mut *self;
        this.consumer
            .poll_next_unpin(cx)
            .map(|d| d.map(|d| (Arc::clone(&this.queue), d)))
    }
}

/// The consumers of one connection and what they follow.
struct Consuming {
    /// The broker's window (pool_grow / pool_shrink / autoscale).
    window: watch::Receiver<usize>,
    /// The consumed queues (add_consumer / cancel_consumer).
    changes: watch::Receiver<u64>,
    /// Consumer tags by queue.
    tags: HashMap<String, ShortString>,
    /// Every consumer's deliveries.
    all: SelectAll<QueueStream>,
    /// How `basic.qos` applies (global, or per consumer on quorum queues).
    qos: BasicQosOptions,
    /// What the consumers yielded after a round was taken (an error, or
    /// their end), for the next call.
    held: Option<Option<FromQueue>>,
}

impl std::fmt::Debug for Consuming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consuming")
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl WorkerTransport for AmqpTransport {
    async fn connect(how: Connect<'_>) -> Result<Self, WorkerError> {
        let config = how.config;
        let settings = LinkSettings::from_config(config);
        let topology = Topology {
            queues: config.queues.clone(),
            max_priority: config.amqp.queue_max_priority,
            quorum: config.amqp.quorum_queues,
            prefetch: u16::try_from(config.prefetch_count()).unwrap_or(u16::MAX),
        };
        let session = Session::new("broker", &config.broker_url, settings.clone(), topology)?;
        session.count_reconnects(how.metrics.reconnects.counter("broker"));
        let live = session.connect(true).await?;
        // Results: rpc:// replies through the outbox, or a Redis backend
        // through a batcher the outbox flushes before its acks.
        let mut results_batcher = None;
        let mut forwarded = None;
        let mut rpc = false;
        match &config.result_backend {
            None => {}
            Some(url) if is_rpc(url) => rpc = true,
            Some(url) => {
                let (b, f) =
                    super::results::open(url, settings, config, how.stats, how.metrics).await?;
                results_batcher = Some(b);
                forwarded = Some(f);
            }
        }
        let outbox = Arc::new(AmqpOutbox::spawn(
            Arc::clone(&session),
            results_batcher.clone().zip(forwarded),
            Arc::clone(how.stats),
        ));
        let results = if rpc {
            Some(ResultStore::Rpc(Arc::clone(&outbox)))
        } else {
            results_batcher.as_ref().map(super::results::store)
        };
        Ok(AmqpTransport {
            session,
            live,
            outbox,
            results_batcher,
            results,
            stats: Arc::clone(how.stats),
            config: config.clone(),
            consuming: None,
        })
    }

    fn label(&self) -> &str {
        self.session.label()
    }

    fn outbox(&self) -> Outbox {
        Outbox::Amqp(Arc::clone(&self.outbox))
    }

    fn results(&self) -> Option<ResultStore> {
        self.results.clone()
    }

    /// Consumes every queue until warm shutdown (`Ok(None)`); when the
    /// connection breaks, connects again (with the session's retries) and
    /// consumes on the new one, or returns the error once it gave up.
    async fn next(&mut self, feed: Feed<'_>) -> Result<Option<Taken>, BrokerError> {
        loop {
            let e = match self.take(feed).await {
                Ok(taken) => return Ok(taken),
                Err(e) => e,
            };
            self.consuming = None;
            tracing::error!("consumer: connection to the broker lost: {e}; reconnecting");
            let again = tokio::select! {
                r = self.session.connect(false) => r,
                _ = feed.warm.cancelled() => return Ok(None),
            };
            self.live = again?;
        }
    }

    async fn flush(&mut self) {
        self.outbox.flush().await;
    }

    fn failure(&self) -> Option<BrokerError> {
        self.outbox.failure()
    }

    /// Rejects the delivery with requeue (dropped when its connection is
    /// gone: the broker requeued it then).
    async fn give_back(&self, tag: String) -> Result<bool, BrokerError> {
        self.outbox.reject(tag);
        Ok(true)
    }

    async fn close(self, _gone: bool) {
        self.outbox.close().await;
        if let Some(b) = &self.results_batcher {
            b.close().await;
        }
        self.session.close().await;
    }
}

impl AmqpTransport {
    /// Starts the consumers on the current connection if needed, then
    /// waits for deliveries: every one already received, up to
    /// [`MAX_TAKEN`]. `Ok(None)` at warm shutdown, `Err` when the
    /// connection broke.
    async fn take(&mut self, feed: Feed<'_>) -> Result<Option<Taken>, BrokerError> {
        if feed.warm.is_cancelled() {
            return Ok(None);
        }
        let live = Arc::clone(&self.live);
        if self.consuming.is_none() {
            let started = tokio::select! {
                c = start(&live, &self.config, feed.node) => c?,
                _ = feed.warm.cancelled() => return Ok(None),
            };
            self.consuming = Some(started);
        }
        let Some(consuming) = self.consuming.as_mut() else {
            return Ok(None);
        };
        let first = match consuming.held.take() {
            Some(held) => held,
            None => loop {
                tokio::select! {
                    n = consuming.all.next(), if !consuming.all.is_empty() => break n,
                    Ok(()) = consuming.window.changed() => {
                        let size = *consuming.window.borrow_and_update();
                        set_window(&live, size, consuming.qos).await?;
                    }
                    Ok(()) = consuming.changes.changed() => {
                        consuming.changes.borrow_and_update();
                        let Consuming { tags, all, .. } = consuming;
                        follow_queues(&live, &self.config, feed.node, tags, all).await?;
                    }
                    _ = feed.warm.cancelled() => return Ok(None),
                }
            },
        };
        let mut taken = Taken::default();
        let mut next = first;
        loop {
            let (queue, d) = match next {
                Some((queue, Ok(d))) => (queue, d),
                Some((_, Err(e))) => return Err(BrokerError::Amqp(e)),
                None => {
                    return Err(BrokerError::GaveUp(
                        "the broker cancelled the consumer".to_owned(),
                    ))
                }
            };
            read(&live, &self.config, &self.stats, &queue, d, &mut taken);
            if taken.deliveries.len() + taken.refused.len() >= MAX_TAKEN {
                break;
            }
            // Deliveries already received go out together; the next one
            // not yet there is waited for by the next call, and so is an
            // error or the end of the consumers (after what was taken).
            match consuming.all.next().now_or_never() {
                Some(Some((queue, Ok(d)))) => next = Some((queue, Ok(d))),
                Some(other) => {
                    consuming.held = Some(other);
                    break;
                }
                None => break,
            }
        }
        Ok(Some(taken))
    }
}

/// Starts consuming on `live`: the window as it is now, and every queue
/// of the node's set.
async fn start(live: &Live, config: &WorkerConfig, node: &Node) -> Result<Consuming, BrokerError> {
    // The window follows pool_grow / pool_shrink / autoscale; set it again
    // when it moved while the connection was down.
    let mut window = node.prefetch.watch();
    let qos = Topology {
        quorum: config.amqp.quorum_queues,
        ..Topology::default()
    }
    .qos_options();
    let wanted = *window.borrow_and_update();
    if wanted != config.prefetch_count() {
        set_window(live, wanted, qos).await?;
    }
    // The consumed queues follow add_consumer / cancel_consumer.
    let mut changes = node.queues.watch();
    changes.borrow_and_update();
    let mut tags = HashMap::new();
    let mut all = SelectAll::new();
    follow_queues(live, config, node, &mut tags, &mut all).await?;
    Ok(Consuming {
        window,
        changes,
        tags,
        all,
        qos,
        held: None,
    })
}

/// Reads one delivery into `taken`: refused for its size, or a
/// [`Delivery`] named `<generation>:<tag>`.
fn read(
    live: &Live,
    config: &WorkerConfig,
    stats: &BrokerStats,
    queue: &str,
    d: lapin::message::Delivery,
    taken: &mut Taken,
) {
    let name = format!("{}:{}", live.generation, d.delivery_tag);
    let queue = queue.to_owned();
    let limit = config.limits.max_message_size;
    stats.add_fetched(1);
    if limit > 0 && d.data.len() > limit {
        // FAILURE first, then the ack: the outbox sends acks only after
        // what was queued before them is written.
        taken.refused.push(Refused {
            oversized: Oversized {
                queue,
                size: u64::try_from(d.data.len()).unwrap_or(u64::MAX),
                id: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned()),
            },
            reply_to: d
                .properties
                .reply_to()
                .as_ref()
                .map(|r| r.as_str().to_owned()),
            ack: Some(name),
        });
        return;
    }
    let envelope = envelope_from_amqp(Incoming {
        body: d.data,
        properties: &d.properties,
        exchange: d.exchange.as_str(),
        routing_key: d.routing_key.as_str(),
        redelivered: d.redelivered,
        tag: &name,
    });
    // Acked by the AMQP delivery tag of this channel.
    taken
        .deliveries
        .push(Delivery::of_fields(queue, name, envelope));
}

/// Sets the prefetch window (`basic.qos`) to `size` messages.
async fn set_window(live: &Live, size: usize, qos: BasicQosOptions) -> Result<(), BrokerError> {
    let count = u16::try_from(size).unwrap_or(u16::MAX);
    tracing::debug!("consumer: prefetch count now {count}");
    live.consume
        .basic_qos(count, qos)
        .await
        .map_err(BrokerError::Amqp)
}

/// Starts consuming the queues added to the node's set since the last
/// call (declaring each with its exchange and binding) and cancels the
/// consumers of queues taken out of it.
async fn follow_queues(
    live: &Live,
    config: &WorkerConfig,
    node: &Node,
    consuming: &mut HashMap<String, ShortString>,
    all: &mut SelectAll<QueueStream>,
) -> Result<(), BrokerError> {
    let wanted = node.queues.snapshot();
    let gone: Vec<String> = consuming
        .keys()
        .filter(|name| !wanted.iter().any(|q| &q.name == *name))
        .cloned()
        .collect();
    for name in gone {
        if let Some(tag) = consuming.remove(&name) {
            live.consume
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
                .map_err(BrokerError::Amqp)?;
            tracing::info!("consumer: no longer consuming from {name}");
        }
    }
    for q in wanted.iter() {
        if consuming.contains_key(&q.name) {
            continue;
        }
        match declare_consumed(live, config, q).await {
            Ok(()) => {}
            Err(e @ BrokerError::Precondition { .. }) => {
                tracing::error!("consumer: not consuming from {}: {e}", q.name);
                node.queues.cancel(&q.name);
                continue;
            }
            Err(e) => return Err(e),
        }
        let tag = ShortString::from(format!(
            "{}-{}-{}",
            config.hostname, live.generation, q.name
        ));
        let consumer = live
            .consume
            .basic_consume(
                q.name.as_str().into(),
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Amqp)?;
        all.push(from_queue(&q.name, consumer));
        consuming.insert(q.name.clone(), tag);
    }
    Ok(())
}

/// Declares a queue added at run time as Celery's `add_task_queue` does:
/// its exchange (of its type, durable), the durable queue with the
/// worker's queue arguments, and the binding by its routing key. Queues
/// named with `-Q` were declared with the connection.
async fn declare_consumed(
    live: &Live,
    config: &WorkerConfig,
    q: &crate::broker::ConsumedQueue,
) -> Result<(), BrokerError> {
    if config.queues.contains(&q.name) {
        return Ok(());
    }
    let kind = match q.exchange_type.as_str() {
        "fanout" => lapin::ExchangeKind::Fanout,
        "topic" => lapin::ExchangeKind::Topic,
        "headers" => lapin::ExchangeKind::Headers,
        _ => lapin::ExchangeKind::Direct,
    };
    let topology = Topology {
        max_priority: config.amqp.queue_max_priority,
        quorum: config.amqp.quorum_queues,
        ..Topology::default()
    };
    // A channel of its own: a refused declaration (406) must not close
    // the consumer's channel.
    let ch = live
        .conn
        .create_channel()
        .await
        .map_err(BrokerError::Amqp)?;
    let durable = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..lapin::options::ExchangeDeclareOptions::default()
    };
    if !q.exchange.is_empty() {
        ch.exchange_declare(
            q.exchange.as_str().into(),
            kind,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| super::session::declare_error(format!("exchange {:?}", q.exchange), e))?;
    }
    ch.queue_declare(
        q.name.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..lapin::options::QueueDeclareOptions::default()
        },
        topology.queue_arguments(),
    )
    .await
    .map_err(|e| super::session::declare_error(format!("queue {:?}", q.name), e))?;
    if !q.exchange.is_empty() {
        ch.queue_bind(
            q.name.as_str().into(),
            q.exchange.as_str().into(),
            q.routing_key.as_str().into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Amqp)?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}
