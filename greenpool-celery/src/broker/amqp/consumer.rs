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

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use greenpool::TaskPool;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tokio_util::task::TaskTracker;

use super::outbox::AmqpOutbox;
use super::session::{Live, Session, Topology};
use super::wire::{envelope_from_amqp, Incoming};
use crate::backend::RedisBackend;
use crate::batch::{Batcher, Targets};
use crate::broker::{Delivery, Transport};
use crate::config::WorkerConfig;
use crate::conn::{Link, LinkSettings};
use crate::error::{BrokerError, WorkerError};
use crate::outbox::{Outbox, ResultStore};
use crate::registry::TaskRegistry;
use crate::scripts::Scripts;
use crate::stats::RedisStats;
use crate::worker::{Counters, Shared, ShutdownHandle, WorkerReport};

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
) -> Result<WorkerReport, WorkerError> {
    let settings = LinkSettings::from_config(&config);
    let topology = Topology {
        queues: config.queues.clone(),
        max_priority: config.queue_max_priority,
        quorum: config.quorum_queues,
        prefetch: u16::try_from(config.prefetch_count()).unwrap_or(u16::MAX),
    };
    let session = Session::new(&config.broker_url, settings.clone(), topology)?;
    let mut live = session.connect(true).await?;
    // Results: rpc:// replies through the outbox, or a Redis backend
    // through a batcher the outbox flushes before its acks.
    let mut results_batcher = None;
    let mut rpc = false;
    match &config.result_backend {
        None => {}
        Some(url) if is_rpc(url) => rpc = true,
        Some(url) => {
            let link =
                Arc::new(Link::open("result backend", url, settings, Some(Scripts::hook())).await?);
            let scripts = link
                .call_until_done("loading the scripts", |mut conn| async move {
                    Scripts::load(&mut conn).await
                })
                .await?
                .map_err(BrokerError::Redis)?;
            results_batcher = Some(Arc::new(Batcher::spawn(
                Targets {
                    broker: link,
                    backend: None,
                    scripts,
                    result_expires: config.result_expires.map_or(0, |d| d.as_secs()),
                },
                Arc::clone(&stats),
            )));
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
        results_batcher
            .as_ref()
            .map(|b| ResultStore::Redis(RedisBackend::with_batcher(Arc::clone(b))))
    };
    let pool = TaskPool::builder()
        .limit(i64::try_from(config.concurrency).unwrap_or(i64::MAX))
        .build()
        .map_err(|e| WorkerError::Pool(e.to_string()))?;
    pool.start().map_err(|e| WorkerError::Pool(e.to_string()))?;
    if config.send_task_events {
        tracing::warn!(
            "worker: remote control and events are not yet available on AMQP; \
             -E (task events) has no effect, and celery inspect/control, \
             celery events and Flower do not see this worker"
        );
    } else {
        tracing::warn!(
            "worker: remote control and events are not yet available on AMQP; \
             celery inspect/control, celery events and Flower do not see this worker"
        );
    }
    let control = crate::control::Node::local(
        &config,
        Arc::clone(&registry),
        pool.clone(),
        shutdown.warm.clone(),
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        registry,
        pool: pool.clone(),
        acks: Outbox::Amqp(Arc::clone(&outbox)),
        backend,
        outstanding: Mutex::new(HashSet::new()),
        warm: shutdown.warm.clone(),
        counters: Counters::default(),
        timer: TaskPool::new_timer(),
        control,
    });
    tracing::info!(
        "Connected to {}; {} ready (concurrency {}, prefetch {}, queues {})",
        session.label(),
        config.hostname,
        config.concurrency,
        config.prefetch_count(),
        config.queues.join(",")
    );
    let closer = {
        let pool = pool.clone();
        let warm = shutdown.warm.clone();
        tokio::spawn(async move {
            warm.cancelled().await;
            tracing::warn!("worker: warm shutdown");
            pool.close();
        })
    };
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
    let _ = closer.await;
    handlers.close();
    tokio::select! {
        _ = handlers.wait() => {}
        _ = shutdown.cold.cancelled() => {}
    }
    tokio::select! {
        r = pool.stop() => { let _ = r; }
        _ = shutdown.cold.cancelled() => {
            tracing::warn!("worker: cold shutdown");
            let _ = pool.terminate().await;
        }
    }
    handlers.wait().await;
    shared.timer.stop();
    outbox.flush().await;
    // Give back whatever is still unacked: prefetched, ETA, or killed
    // late-ack requests.
    let left: Vec<String> = shared
        .outstanding
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .collect();
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
    let c = &shared.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Ok(WorkerReport {
        received: load(&c.received),
        succeeded: load(&c.succeeded),
        failed: load(&c.failed),
        revoked: load(&c.revoked),
        retried: load(&c.retried),
        restored,
    })
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
    let mut streams = Vec::new();
    for q in &shared.config.queues {
        let consumer = live
            .consume
            .basic_consume(
                q.as_str().into(),
                format!("{}-{}-{q}", shared.config.hostname, live.generation).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Amqp)?;
        streams.push(consumer.map(move |d| d.map(|d| (d,))));
    }
    let mut all = futures::stream::select_all(streams);
    loop {
        let next = tokio::select! {
            n = all.next() => n,
            _ = shutdown.warm.cancelled() => return Ok(()),
        };
        let d = match next {
            Some(Ok((d,))) => d,
            Some(Err(e)) => return Err(BrokerError::Amqp(e)),
            None => {
                return Err(BrokerError::GaveUp(
                    "the broker cancelled the consumer".to_owned(),
                ))
            }
        };
        let name = format!("{}:{}", live.generation, d.delivery_tag);
        let queue = d.routing_key.as_str().to_owned();
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
