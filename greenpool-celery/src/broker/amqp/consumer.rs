//! The worker on AMQP: consume with `basic.consume` under `basic.qos`,
//! hand each delivery to the shared request path, reconnect when the
//! connection breaks, and on shutdown give back (reject with requeue)
//! what was prefetched but never started.
//!
//! The broker enforces the prefetch window (concurrency × multiplier
//! unacked messages per consumer), so the consumer takes every delivery as
//! it comes. A delivery is named `<generation>:<tag>`, so that acks of a
//! connection that broke are dropped instead of acking an unrelated
//! message on the next one: the broker requeued those messages itself.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use greenpool::TaskPool;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_util::task::TaskTracker;

use super::outbox::AmqpOutbox;
use super::session::{Live, Session, Topology};
use super::wire::{envelope_from_amqp, Incoming};
use crate::broker::{Delivery, Oversized, Transport};
use crate::config::WorkerConfig;
use crate::conn::LinkSettings;
use crate::error::{BrokerError, WorkerError};
use crate::outbox::{Outbox, ResultStore};
use crate::registry::TaskRegistry;
use crate::stats::RedisStats;
use crate::worker::{refuse_oversized, Shared, ShutdownHandle, WorkerReport};

/// Whether `url` names the rpc:// backend (or the AMQP broker itself,
/// which Celery reads the same way).
fn is_rpc(url: &str) -> bool {
    url.starts_with("rpc://") || matches!(Transport::of(url), Ok(Transport::Amqp))
}

/// Runs a worker on the AMQP broker of `config` until shut down.
pub(crate) async fn run(
    config: WorkerConfig,
    registry: Arc<TaskRegistry>,
    shutdown: ShutdownHandle,
    ready: Arc<tokio::sync::Notify>,
    stats: Arc<RedisStats>,
    metrics: Arc<crate::metrics::WorkerMetrics>,
) -> Result<WorkerReport, WorkerError> {
    let settings = LinkSettings::from_config(&config);
    let topology = Topology {
        queues: config.queues.clone(),
        max_priority: config.amqp.queue_max_priority,
        quorum: config.amqp.quorum_queues,
        prefetch: u16::try_from(config.prefetch_count()).unwrap_or(u16::MAX),
    };
    let session = Session::new("broker", &config.broker_url, settings.clone(), topology)?;
    session.count_reconnects(metrics.reconnects.counter("broker"));
    let mut live = session.connect(true).await?;
    // Results: rpc:// replies through the outbox, or a Redis backend
    // through a batcher the outbox flushes before its acks.
    let mut results_batcher = None;
    let mut rpc = false;
    match &config.result_backend {
        None => {}
        Some(url) if is_rpc(url) => rpc = true,
        Some(url) => {
            results_batcher =
                Some(super::results::open(url, settings, &config, &stats, &metrics).await?);
        }
    }
    let outbox = Arc::new(AmqpOutbox::spawn(
        Arc::clone(&session),
        results_batcher.clone(),
        Arc::clone(&stats),
    ));
    let backend = if rpc {
        Some(ResultStore::Rpc(Arc::clone(&outbox)))
    } else {
        results_batcher.as_ref().map(super::results::store)
    };
    let pool = TaskPool::builder()
        .limit(i64::try_from(config.initial_pool_limit()).unwrap_or(i64::MAX))
        .build()
        .map_err(|e| WorkerError::Pool(e.to_string()))?;
    pool.start().map_err(|e| WorkerError::Pool(e.to_string()))?;
    let queues = Arc::new(crate::broker::ActiveQueues::new(&config.queues));
    let control = crate::control::Node::connect(
        &config,
        Arc::clone(&registry),
        pool.clone(),
        // rpc:// results go to each request's reply_to only.
        backend
            .clone()
            .filter(|b| !matches!(b, ResultStore::Rpc(_))),
        shutdown.warm.clone(),
        Arc::clone(&queues),
        metrics,
    )
    .await?;
    let shared = Shared::new(
        config.clone(),
        registry,
        pool.clone(),
        Outbox::Amqp(Arc::clone(&outbox)),
        backend,
        &shutdown,
        Arc::clone(&control),
    );
    tracing::info!(
        "Connected to {}; {} ready (concurrency {}, prefetch {}, queues {})",
        session.label(),
        config.hostname,
        config.concurrency,
        config.prefetch_count(),
        config.queues.join(",")
    );
    let closer = crate::broker::close_at_warm_shutdown(&pool, &shutdown);
    let service = crate::control::Service::start(&control).await;
    ready.notify_waiters();
    let handlers = TaskTracker::new();
    let consumed = loop {
        match consume(&live, &shared, &handlers, &shutdown, &stats).await {
            Ok(()) => break Ok(()),
            Err(e) => {
                tracing::error!("consumer: connection to the broker lost: {e}; reconnecting");
                let again = tokio::select! {
                    r = session.connect(false) => r,
                    _ = shutdown.warm.cancelled() => break Ok(()),
                };
                match again {
                    Ok(l) => live = l,
                    Err(e) => break Err(e),
                }
            }
        }
    };
    if consumed.is_err() {
        shutdown.warm.cancel();
    }
    crate::broker::finish_tasks(closer, &handlers, &pool, &shutdown, &shared, service).await;
    outbox.flush().await;
    // Give back whatever is still unacked: prefetched, ETA, or killed
    // late-ack requests.
    let left = crate::broker::take_outstanding(&shared);
    let restored = left.len() as u64;
    for tag in left {
        outbox.reject(tag);
    }
    if restored > 0 {
        tracing::warn!("Restoring {restored} unacknowledged message(s)");
    }
    outbox.close().await;
    if let Some(b) = &results_batcher {
        b.close().await;
    }
    session.close().await;
    consumed?;
    Ok(crate::broker::report(&shared, restored))
}

/// Consumes every queue on `live` until warm shutdown (`Ok`) or until the
/// connection breaks (`Err`).
async fn consume(
    live: &Live,
    shared: &Arc<Shared>,
    handlers: &TaskTracker,
    shutdown: &ShutdownHandle,
    stats: &RedisStats,
) -> Result<(), BrokerError> {
    // The window follows pool_grow / pool_shrink / autoscale; set it again
    // when it moved while the connection was down.
    let mut window = shared.control.prefetch.watch();
    let qos = Topology {
        quorum: shared.config.amqp.quorum_queues,
        ..Topology::default()
    }
    .qos_options();
    let wanted = *window.borrow_and_update();
    if wanted != shared.config.prefetch_count() {
        set_window(live, wanted, qos).await?;
    }
    // The consumed queues follow add_consumer / cancel_consumer.
    let mut changes = shared.control.queues.watch();
    changes.borrow_and_update();
    let mut consuming: HashMap<String, ShortString> = HashMap::new();
    let mut all = futures::stream::SelectAll::new();
    follow_queues(live, shared, &mut consuming, &mut all).await?;
    loop {
        let next = tokio::select! {
            n = all.next(), if !all.is_empty() => n,
            Ok(()) = window.changed() => {
                let size = *window.borrow_and_update();
                set_window(live, size, qos).await?;
                continue;
            }
            Ok(()) = changes.changed() => {
                changes.borrow_and_update();
                follow_queues(live, shared, &mut consuming, &mut all).await?;
                continue;
            }
            _ = shutdown.warm.cancelled() => return Ok(()),
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(BrokerError::Amqp(e)),
            None => {
                return Err(BrokerError::GaveUp(
                    "the broker cancelled the consumer".to_owned(),
                ))
            }
        };
        let name = format!("{}:{}", live.generation, d.delivery_tag);
        let queue = d.routing_key.as_str().to_owned();
        let limit = shared.config.limits.max_message_size;
        if limit > 0 && d.data.len() > limit {
            stats.add_fetched(1);
            // FAILURE first, then the ack: the outbox sends acks only after
            // what was queued before them is written.
            let big = Oversized {
                queue,
                size: u64::try_from(d.data.len()).unwrap_or(u64::MAX),
                id: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned()),
            };
            let reply_to = d.properties.reply_to().as_ref().map(|r| r.as_str());
            refuse_oversized(shared, big, reply_to);
            shared.acks.ack(name);
            continue;
        }
        let raw = envelope_from_amqp(&Incoming {
            body: &d.data,
            properties: &d.properties,
            exchange: d.exchange.as_str(),
            routing_key: d.routing_key.as_str(),
            redelivered: d.redelivered,
            tag: &name,
        });
        stats.add_fetched(1);
        let mut delivery = Delivery::read(queue, raw.into_bytes());
        // Acked by the AMQP delivery tag of this channel, whatever the
        // envelope says.
        delivery.tag = Some(name);
        handlers.spawn(crate::request::handle(Arc::clone(shared), delivery, None));
    }
}

/// Sets the prefetch window (`basic.qos`) to `size` messages.
async fn set_window(
    live: &Live,
    size: usize,
    qos: lapin::options::BasicQosOptions,
) -> Result<(), BrokerError> {
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
    shared: &Arc<Shared>,
    consuming: &mut HashMap<String, ShortString>,
    all: &mut futures::stream::SelectAll<lapin::Consumer>,
) -> Result<(), BrokerError> {
    let wanted = shared.control.queues.snapshot();
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
        match declare_consumed(live, shared, q).await {
            Ok(()) => {}
            Err(e @ BrokerError::Precondition { .. }) => {
                tracing::error!("consumer: not consuming from {}: {e}", q.name);
                shared.control.queues.cancel(&q.name);
                continue;
            }
            Err(e) => return Err(e),
        }
        let tag = ShortString::from(format!(
            "{}-{}-{}",
            shared.config.hostname, live.generation, q.name
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
        all.push(consumer);
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
    shared: &Arc<Shared>,
    q: &crate::broker::ConsumedQueue,
) -> Result<(), BrokerError> {
    if shared.config.queues.contains(&q.name) {
        return Ok(());
    }
    let kind = match q.exchange_type.as_str() {
        "fanout" => lapin::ExchangeKind::Fanout,
        "topic" => lapin::ExchangeKind::Topic,
        "headers" => lapin::ExchangeKind::Headers,
        _ => lapin::ExchangeKind::Direct,
    };
    let topology = Topology {
        max_priority: shared.config.amqp.queue_max_priority,
        quorum: shared.config.amqp.quorum_queues,
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
