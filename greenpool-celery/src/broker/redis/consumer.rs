//! The worker's transport on kombu's Redis transport: fetch within the
//! prefetch window (the two-step fetch of [`super`]), back off while the
//! queues are empty, recover the link, sweep the visibility timeout, keep
//! the worker's liveness key fresh, and give back what is left at
//! shutdown. The worker's lifecycle drives it through
//! [`WorkerTransport`].

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::{Batcher, Targets};
use super::scripts::Scripts;
use super::RedisBroker;
use crate::backend::RedisBackend;
use crate::broker::transport::{Connect, Feed, Permits, Taken, WorkerTransport};
use crate::conn::{Link, LinkSettings};
use crate::error::{BrokerError, WorkerError};
use crate::outbox::{Outbox, ResultStore};

/// Longest sleep between fetches while every queue is empty.
const IDLE_POLL_MAX: Duration = Duration::from_millis(100);

/// A worker's connection to kombu's Redis transport.
#[derive(Debug)]
pub(crate) struct RedisTransport {
    /// The fetch, the restores and the worker's registration.
    broker: Arc<RedisBroker>,
    /// The writer: results, follow-ups and acks in atomic batches.
    acks: Arc<Batcher>,
    /// The Redis result backend (through `acks`), if any.
    results: Option<ResultStore>,
    /// The broker URL, for the log line.
    label: String,
    /// Most messages one fetch takes.
    fetch_batch: usize,
    /// The current idle backoff.
    idle: Duration,
    /// Fetches failed in a row.
    failures: u32,
    /// The visibility sweep and the liveness refresh (both end at warm
    /// shutdown).
    background: Vec<JoinHandle<()>>,
}

impl WorkerTransport for RedisTransport {
    async fn connect(how: Connect<'_>) -> Result<Self, WorkerError> {
        let config = how.config;
        let settings = LinkSettings::from_config(config);
        let broker_link = Arc::new(
            Link::open(
                "broker",
                &config.broker_url,
                settings.clone(),
                Some(Scripts::hook()),
            )
            .await?,
        );
        broker_link.count_reconnects(how.metrics.reconnects.counter("broker"));
        let broker = Arc::new(
            RedisBroker::new(
                Arc::clone(&broker_link),
                config.hostname.clone(),
                Arc::clone(how.queues),
                config.redis.legacy_fetch,
                config.redis.queue_order,
                config.limits.max_message_size,
                Arc::clone(how.stats),
            )
            .await?,
        );
        broker.declare().await?;
        broker.register().await?;
        let backend_link = match &config.result_backend {
            Some(url) if *url != config.broker_url => {
                let settings = LinkSettings::for_backend(config);
                let link =
                    Link::open("result backend", url, settings, Some(Scripts::hook())).await?;
                link.count_reconnects(how.metrics.reconnects.counter("result backend"));
                Some(Arc::new(link))
            }
            _ => None,
        };
        let acks = Arc::new(Batcher::spawn(
            Targets {
                forward: None,
                broker: broker_link,
                backend: backend_link,
                scripts: broker.scripts().clone(),
                result_expires: config.result_expires.map_or(0, |d| d.as_secs()),
            },
            Arc::clone(how.stats),
        ));
        let results = config
            .result_backend
            .as_ref()
            .map(|_| ResultStore::Redis(RedisBackend::with_batcher(Arc::clone(&acks))));
        let background = vec![
            tokio::spawn(sweep(
                Arc::clone(&broker),
                config.redis.visibility_timeout,
                config.redis.restore_interval,
                how.warm.clone(),
            )),
            tokio::spawn(keep_alive(Arc::clone(&broker), how.warm.clone())),
        ];
        Ok(RedisTransport {
            broker,
            acks,
            results,
            label: crate::conn::link::redact(&config.broker_url),
            fetch_batch: config.redis.fetch_batch,
            idle: Duration::ZERO,
            failures: 0,
            background,
        })
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn outbox(&self) -> Outbox {
        Outbox::Redis(Arc::clone(&self.acks))
    }

    fn results(&self) -> Option<ResultStore> {
        self.results.clone()
    }

    /// Fetches within the prefetch budget: waits for a first permit, then
    /// takes up to the free permits (at most `fetch_batch`) in one fetch.
    /// Returns an error when the broker link (or the batcher's) gave up.
    async fn next(&mut self, feed: Feed<'_>) -> Result<Option<Taken>, BrokerError> {
        let prefetch = feed.node.prefetch.semaphore();
        let warm = feed.warm;
        loop {
            let first = tokio::select! {
                p = Arc::clone(&prefetch).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return Ok(None),
                },
                _ = warm.cancelled() => return Ok(None),
                _ = self.acks.gave_up() => return Err(self.acks.failure().unwrap_or_else(
                    || BrokerError::GaveUp("the batcher stopped".to_owned()))),
            };
            if warm.is_cancelled() {
                return Ok(None);
            }
            let budget = 1 + prefetch
                .available_permits()
                .min(self.fetch_batch.saturating_sub(1));
            let stamp = RedisBroker::stamp();
            let fetched = match self.broker.fetch(budget, stamp).await {
                Ok(f) => f,
                Err(e) => {
                    drop(first);
                    self.failures = self.failures.saturating_add(1);
                    if self.failures == 1 {
                        tracing::error!("consumer: cannot fetch: {e}");
                    }
                    tokio::select! {
                        r = self.broker.link().recover() => r?,
                        _ = warm.cancelled() => return Ok(None),
                    }
                    // Whatever step 1 moved before its reply was lost stays
                    // in this worker's in-flight lists: the next fetch reads
                    // and records it first.
                    // A busy server (loading after a restart, say) answers at
                    // once: do not spin on it.
                    let pause = self
                        .broker
                        .link()
                        .settings()
                        .backoff
                        .delay(self.failures)
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = warm.cancelled() => return Ok(None),
                    }
                }
            };
            if self.failures > 0 {
                tracing::warn!(
                    "consumer: fetching again after {} failed attempt(s)",
                    self.failures
                );
                self.failures = 0;
            }
            if fetched.is_empty() {
                drop(first);
                self.idle = (self.idle * 2).clamp(Duration::from_millis(1), IDLE_POLL_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(self.idle) => continue,
                    _ = warm.cancelled() => return Ok(None),
                }
            }
            self.idle = Duration::ZERO;
            return Ok(Some(Taken {
                deliveries: fetched.deliveries,
                refused: fetched.oversized.into_iter().map(Into::into).collect(),
                permits: Some(Permits {
                    first,
                    window: prefetch,
                }),
            }));
        }
    }

    /// Waits for the sweep and the liveness refresh to stop (they end at
    /// warm shutdown), then for the batcher to write what it holds.
    async fn flush(&mut self) {
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        self.acks.flush().await;
    }

    fn failure(&self) -> Option<BrokerError> {
        self.acks.failure()
    }

    /// Puts the message back at the front of its queue (removing it from
    /// `unacked`).
    async fn give_back(&self, tag: String) -> Result<bool, BrokerError> {
        self.broker.restore(&tag, false).await
    }

    async fn close(self, gone: bool) {
        if !gone {
            // No fetch runs any more: forget this worker's in-flight lists
            // (empty unless the last record failed; then they go back).
            if let Err(e) = self.broker.unregister().await {
                tracing::warn!("cannot unregister the worker's in-flight lists: {e}");
            }
        }
        self.acks.close().await;
    }
}

/// The restore sweep, at start and then every `interval`.
async fn sweep(
    broker: Arc<RedisBroker>,
    visibility_timeout: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        match broker
            .restore_visible(visibility_timeout.as_secs_f64())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "Restored {n} message(s) unacked for longer than the visibility timeout"
            ),
            Err(e) => tracing::warn!("restore sweep failed: {e}"),
        }
        if let Err(e) = broker.return_dead().await {
            tracing::warn!("cannot return the in-flight messages of dead workers: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Refreshes the worker's liveness key until warm shutdown.
async fn keep_alive(broker: Arc<RedisBroker>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(super::LIVENESS_REFRESH) => {}
            _ = stop.cancelled() => return,
        }
        // A lost connection is logged by the link; the next refresh tries
        // again, well within the key's lifetime.
        if let Err(e) = broker.refresh_liveness().await {
            tracing::debug!("cannot refresh the liveness key: {e}");
        }
    }
}
