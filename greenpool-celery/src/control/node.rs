//! [`Node`]: what the worker's remote control and events see and steer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use greenpool::TaskPool;
use tokio_util::sync::CancellationToken;

use super::autoscale::Autoscaler;
use super::prefetch::Prefetch;
use super::rate_limit::{parse_rate, RateLimits};
use super::requests::Requests;
use super::revoked::RevokedSet;
use super::wire::NodeWire;
use crate::broker::ActiveQueues;
use crate::config::WorkerConfig;
#[cfg(feature = "redis")]
use crate::conn::Link;
use crate::conn::LinkSettings;
use crate::error::BrokerError;
use crate::events::{EventDispatcher, LamportClock};
use crate::metrics::{PoolSample, WorkerMetrics};
use crate::outbox::ResultStore;
use crate::protocol::TimeLimit;
use crate::registry::TaskRegistry;

/// The worker as a Celery node: its pool, its held requests, revoked
/// ids, limits and event dispatcher, shared by the consumer, every
/// request, the mailbox and the heartbeat.
#[derive(Debug)]
pub(crate) struct Node {
    /// The node name (`celery@host`).
    pub(crate) hostname: String,
    pub(crate) config: WorkerConfig,
    pub(crate) registry: Arc<TaskRegistry>,
    pub(crate) pool: TaskPool,
    /// Where revoked tasks' REVOKED results go: the Redis backend only
    /// (rpc:// results go to a request's `reply_to`, which a revoke by id
    /// does not know).
    pub(crate) backend: Option<ResultStore>,
    pub(crate) clock: Arc<LamportClock>,
    pub(crate) events: EventDispatcher,
    pub(crate) revoked: RevokedSet,
    pub(crate) requests: Arc<Requests>,
    pub(crate) prefetch: Prefetch,
    pub(crate) rate_limits: RateLimits,
    /// Time limits set by `time_limit`, by task name.
    pub(crate) time_limits: Mutex<HashMap<String, TimeLimit>>,
    /// Task ids being terminated, with the signal number asked for: their
    /// outcome is reported as REVOKED, whatever the job did after.
    pub(crate) terminating: Mutex<HashMap<String, i32>>,
    /// The autoscaler, when `--autoscale` is on.
    pub(crate) autoscaler: Option<Autoscaler>,
    /// Warm shutdown of the worker.
    pub(crate) shutdown: CancellationToken,
    /// The node's own reconnecting connection to the broker: the
    /// mailbox, replies and events.
    pub(crate) wire: NodeWire,
    pub(crate) started: Instant,
    /// Tasks that ended, and tasks accepted by name (`stats.total`).
    pub(crate) processed: AtomicU64,
    pub(crate) totals: Mutex<BTreeMap<String, u64>>,
    /// The queues consumed (`active_queues`, `add_consumer`,
    /// `cancel_consumer`); the Redis fetch reads the same set.
    pub(crate) queues: Arc<ActiveQueues>,
    /// The worker's Prometheus metrics.
    pub(crate) metrics: Arc<WorkerMetrics>,
}

impl Node {
    /// Connects the node's own connection to the worker's broker (Redis
    /// or AMQP, by the URL): the mailbox, replies and events.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn connect(
        config: &WorkerConfig,
        registry: Arc<TaskRegistry>,
        pool: TaskPool,
        backend: Option<ResultStore>,
        shutdown: CancellationToken,
        queues: Arc<ActiveQueues>,
        metrics: Arc<WorkerMetrics>,
    ) -> Result<Arc<Node>, BrokerError> {
        let settings = LinkSettings::from_config(config);
        let wire = match crate::broker::Transport::of(&config.broker_url)? {
            #[cfg(feature = "redis")]
            crate::broker::Transport::Redis => {
                let link = Arc::new(
                    Link::open("remote control", &config.broker_url, settings, None).await?,
                );
                link.count_reconnects(metrics.reconnects.counter("remote control"));
                let db = link.client().get_connection_info().redis_settings().db();
                NodeWire::Redis { link, db }
            }
            #[cfg(feature = "amqp")]
            crate::broker::Transport::Amqp => {
                let link = crate::broker::amqp::node_link::AmqpNodeLink::open(
                    &config.broker_url,
                    settings,
                )
                .await?;
                link.count_reconnects(metrics.reconnects.counter("remote control"));
                NodeWire::Amqp(link)
            }
        };
        let clock = Arc::new(LamportClock::default());
        let events = EventDispatcher::spawn(
            wire.clone(),
            config.hostname.clone(),
            Arc::clone(&clock),
            config.send_task_events,
        );
        let rate_limits = RateLimits::default();
        for name in registry.names() {
            let limit = registry
                .get(name)
                .and_then(|t| t.options.rate_limit.clone());
            if let Some(limit) = limit {
                match parse_rate(&limit) {
                    Ok(r) => rate_limits.set(name, r),
                    Err(e) => tracing::error!("task {name}: invalid rate limit {limit:?}: {e}"),
                }
            }
        }
        let autoscaler = config
            .autoscale
            .map(|(max, min)| Autoscaler::new(max, min, super::autoscale::KEEPALIVE));
        let node = Arc::new(Node {
            hostname: config.hostname.clone(),
            config: config.clone(),
            registry,
            pool,
            backend,
            clock,
            events,
            revoked: RevokedSet::default(),
            requests: Arc::new(Requests::default()),
            prefetch: Prefetch::new(config.prefetch_count()),
            rate_limits,
            time_limits: Mutex::new(HashMap::new()),
            terminating: Mutex::new(HashMap::new()),
            autoscaler,
            shutdown,
            wire,
            started: Instant::now(),
            processed: AtomicU64::new(0),
            totals: Mutex::new(BTreeMap::new()),
            queues,
            metrics,
        });
        let weak = Arc::downgrade(&node);
        node.metrics
            .pool
            .watch(move || weak.upgrade().map(|n| n.pool_sample()));
        Ok(node)
    }

    /// The pool gauges now.
    fn pool_sample(&self) -> PoolSample {
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        PoolSample {
            limit: int(self.pool.limit()),
            running: int(self.pool.running()),
            free: i64::try_from(self.pool.free()).unwrap_or(i64::MAX),
            prefetch: int(self.prefetch.size()),
        }
    }

    /// Counts a task that started (`stats.total`).
    pub(crate) fn count_accepted(&self, name: &str) {
        let mut t = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        match t.get_mut(name) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                t.insert(name.to_owned(), 1);
            }
        }
    }

    /// Counts a task that ended (heartbeats' `processed`).
    pub(crate) fn count_processed(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    /// The time limits of a task: the message's own, else those set by
    /// `time_limit` for its name, else the worker's `--time-limit` and
    /// `--soft-time-limit`, each limit on its own (Celery's order).
    pub(crate) fn time_limits(&self, name: &str, message: TimeLimit) -> TimeLimit {
        let set = self
            .time_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or_default();
        TimeLimit {
            hard: message.hard.or(set.hard).or(self.config.limits.time_limit),
            soft: message
                .soft
                .or(set.soft)
                .or(self.config.limits.soft_time_limit),
        }
    }
}
