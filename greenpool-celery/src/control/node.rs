//! [`Node`]: the worker's one state that remote control, events and
//! every request share: the settings, the registry, the pool, the result
//! store, the node name and warm shutdown live here, once; the request
//! path reaches them through `worker::Shared::control`. Every count of a
//! request is made by the node's [`Recorder`] (`recorder.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use greenpool::TaskPool;
use tokio_util::sync::CancellationToken;

use super::autoscale::Autoscaler;
use super::prefetch::Prefetch;
use super::rate_limit::{parse_rate, RateLimits};
use super::recorder::Recorder;
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

/// The worker as a Celery node: its settings, tasks, pool and result
/// store, its held requests, revoked ids, limits and the recorder of its
/// counts and events, shared by the consumer, every request, the mailbox
/// and the heartbeat.
#[derive(Debug)]
pub(crate) struct Node {
    /// The node name (`celery@host`), shared by every task's context.
    pub(crate) hostname: Arc<str>,
    /// The worker's settings.
    pub(crate) config: WorkerConfig,
    /// The tasks it runs.
    pub(crate) registry: Arc<TaskRegistry>,
    /// The pool requests run in.
    pub(crate) pool: TaskPool,
    /// Where results go (`None` without a result backend); see
    /// [`Node::results_by_id`] for revokes.
    pub(crate) backend: Option<ResultStore>,
    /// The node's Lamport clock (events and replies).
    pub(crate) clock: Arc<LamportClock>,
    /// Every count of the worker's requests, and the event dispatcher.
    pub(crate) recorder: Recorder,
    /// Task ids revoked.
    pub(crate) revoked: RevokedSet,
    /// The requests held, by phase.
    pub(crate) requests: Arc<Requests>,
    /// The prefetch window.
    pub(crate) prefetch: Prefetch,
    /// Rate limits by task name.
    pub(crate) rate_limits: RateLimits,
    /// Time limits set by `time_limit`, by task name.
    pub(crate) time_limits: Mutex<HashMap<String, TimeLimit>>,
    /// Task ids being terminated, with the signal number asked for: their
    /// outcome is reported as REVOKED, whatever the job did after.
    pub(crate) terminating: Mutex<HashMap<String, i32>>,
    /// The autoscaler, when `--autoscale` is on.
    pub(crate) autoscaler: Option<Autoscaler>,
    /// Warm shutdown of the worker (ETA waits end on it too).
    pub(crate) shutdown: CancellationToken,
    /// The node's own reconnecting connection to the broker: the
    /// mailbox, replies and events.
    pub(crate) wire: NodeWire,
    /// When the node started (`stats.uptime`).
    pub(crate) started: Instant,
    /// The queues consumed (`active_queues`, `add_consumer`,
    /// `cancel_consumer`); the Redis fetch reads the same set.
    pub(crate) queues: Arc<ActiveQueues>,
}

/// What a node is made of: the worker's parts, each held once by the
/// node from then on.
#[derive(Debug)]
pub(crate) struct NodeParts {
    /// The worker's settings.
    pub(crate) config: WorkerConfig,
    /// The tasks it runs.
    pub(crate) registry: Arc<TaskRegistry>,
    /// The pool requests run in (started).
    pub(crate) pool: TaskPool,
    /// The transport's result store, if any.
    pub(crate) backend: Option<ResultStore>,
    /// Warm shutdown.
    pub(crate) shutdown: CancellationToken,
    /// The queues consumed, shared with the transport.
    pub(crate) queues: Arc<ActiveQueues>,
    /// The Prometheus metrics.
    pub(crate) metrics: Arc<WorkerMetrics>,
}

impl Node {
    /// Connects the node's own connection to the worker's broker (Redis
    /// or AMQP, by the URL): the mailbox, replies and events.
    pub(crate) async fn connect(parts: NodeParts) -> Result<Arc<Node>, BrokerError> {
        let NodeParts {
            config,
            registry,
            pool,
            backend,
            shutdown,
            queues,
            metrics,
        } = parts;
        let settings = LinkSettings::from_config(&config);
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
        let watched = Arc::clone(&metrics);
        let node = Arc::new(Node {
            hostname: Arc::from(config.hostname.as_str()),
            prefetch: Prefetch::new(config.prefetch_count()),
            config,
            registry,
            pool,
            backend,
            clock,
            recorder: Recorder::new(metrics, events),
            revoked: RevokedSet::default(),
            requests: Arc::new(Requests::default()),
            rate_limits,
            time_limits: Mutex::new(HashMap::new()),
            terminating: Mutex::new(HashMap::new()),
            autoscaler,
            shutdown,
            wire,
            started: Instant::now(),
            queues,
        });
        let weak = Arc::downgrade(&node);
        watched
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

    /// Where the REVOKED result of a revoke by id goes: the Redis backend
    /// only (rpc:// results go to a request's `reply_to`, which a revoke
    /// by id does not know).
    pub(crate) fn results_by_id(&self) -> Option<&ResultStore> {
        self.backend.as_ref().filter(|b| b.by_id())
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
