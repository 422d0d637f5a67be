//! kombu's Redis transport, consumer side: [`RedisBroker`], one worker's
//! connection to the broker, and the state machines it runs in Redis.
//!
//! A message is at every instant in its queue, in an in-flight list of
//! the worker that took it, or in kombu's `unacked` hash (with its
//! delivery time in `unacked_index`). Each module moves it along some of
//! the edges between these places:
//!
//! * [`fetch`]: queue -> in-flight list (step 1, the take) -> `unacked`
//!   (step 2, the record); its doc tells what window is left between the
//!   steps and why it is a delay, not a loss.
//! * [`liveness`]: in-flight list -> queue, for a worker that is gone. A
//!   worker keeps a liveness key with an expiry and registers its
//!   in-flight lists; it returns its own lists at start and at a clean
//!   stop, and those of workers whose key expired at every sweep.
//! * [`restore`]: `unacked` -> queue, for a requeueing reject and for the
//!   visibility-timeout sweep (under the `unacked_mutex` lock).
//! * [`bindings`]: the exchange binding tables that say which queue a
//!   restored message goes back to, written when the queues are declared.
//!
//! An ack takes a message out of `unacked` through the [`batch`] writer,
//! never before the results and follow-ups queued ahead of it;
//! [`scripts`] holds the Lua scripts that keep each multi-step move
//! atomic; [`consumer`] runs the loop that drives it all.

pub(crate) mod batch;
mod bindings;
mod chord;
pub(crate) mod consumer;
mod fetch;
mod liveness;
mod restore;
pub(crate) mod scripts;
pub(crate) mod writes;

pub(crate) use self::bindings::bind;
pub(crate) use self::liveness::LIVENESS_REFRESH;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use self::scripts::Scripts;
use super::{ActiveQueues, ConsumedQueue};
use crate::config::{QueueOrder, RedisKeys};
use crate::conn::Link;
use crate::error::BrokerError;
use crate::stats::BrokerStats;

/// The oldest Redis the worker runs on (multi-field `HSET`, `MEMORY`).
const MIN_VERSION: (u32, u32) = (4, 0);

/// One queue key and where its messages wait between the two steps.
#[derive(Debug, Clone)]
struct Pair {
    /// The queue list.
    key: String,
    /// This worker's in-flight list for it.
    flight: String,
}

/// A set of consumed queues and, for each, its keys in priority order
/// with this worker's in-flight list for each.
#[derive(Debug)]
struct Layout {
    queues: Arc<Vec<ConsumedQueue>>,
    pairs: Vec<Vec<Pair>>,
    /// The queues' indices in the order the take reads them (before the
    /// round-robin rotation, if any): consumption order, or by name for
    /// `queue_order_strategy` `sorted`.
    rank: Vec<usize>,
}

impl Layout {
    fn new(
        keys: &RedisKeys,
        order: QueueOrder,
        worker: &str,
        queues: Arc<Vec<ConsumedQueue>>,
    ) -> Self {
        let pairs = queues
            .iter()
            .map(|q| {
                keys.priority_steps
                    .iter()
                    .map(|step| {
                        let key = keys.step_key(&q.name, *step);
                        Pair {
                            flight: keys.inflight_key(worker, &key),
                            key,
                        }
                    })
                    .collect()
            })
            .collect();
        let mut rank: Vec<usize> = (0..queues.len()).collect();
        if order == QueueOrder::Sorted {
            rank.sort_by(|a, b| {
                let name = |i: &usize| queues.get(*i).map(|q| q.name.as_str());
                name(a).cmp(&name(b))
            });
        }
        Layout {
            queues,
            pairs,
            rank,
        }
    }
}

/// A connection to the broker for one worker.
#[derive(Debug)]
pub(crate) struct RedisBroker {
    link: Arc<Link>,
    scripts: Scripts,
    /// The queues consumed, changed at run time by `add_consumer` and
    /// `cancel_consumer`; each fetch reads the current set.
    queues: Arc<ActiveQueues>,
    /// The keys of the set last read (rebuilt when the set changes).
    layout: Mutex<Arc<Layout>>,
    /// This worker's name, which names its in-flight lists.
    worker: String,
    /// Rotation of the queue order, as kombu's round-robin cycle.
    turn: AtomicUsize,
    /// How the next queue is picked (`queue_order_strategy`).
    queue_order: QueueOrder,
    /// Move one message at a time in the take script (no `SORT`).
    single_moves: bool,
    max_message_size: usize,
    /// See [`HALT_AFTER_TAKE_ENV`](fetch::HALT_AFTER_TAKE_ENV); only in
    /// builds with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    halt_after_take: bool,
    stats: Arc<BrokerStats>,
}

/// The time now, in seconds since the Unix epoch (0 before it).
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `major.minor` from `INFO server`.
fn server_version(info: &str) -> Option<(u32, u32, String)> {
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, v.to_owned()))
}

/// Sends `pipe` (its replies ignored) through `link`, again after each
/// reconnection until it went through; `what` names it in the log.
async fn write_pipe(link: &Link, what: &str, pipe: &redis::Pipeline) -> Result<(), BrokerError> {
    link.call_until_done(what, |mut conn| async move {
        pipe.query_async::<()>(&mut conn).await
    })
    .await?
    .map_err(BrokerError::Redis)
}

impl RedisBroker {
    /// Checks the server version and loads the scripts on `link`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Version`] for a server older than Redis 4.0, or any
    /// Redis error.
    pub(crate) async fn new(
        link: Arc<Link>,
        worker: String,
        queues: Arc<ActiveQueues>,
        legacy_fetch: bool,
        queue_order: QueueOrder,
        max_message_size: usize,
        stats: Arc<BrokerStats>,
    ) -> Result<Self, BrokerError> {
        let (info, scripts) = link
            .call_until_done("loading the scripts", |mut conn| async move {
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await?;
                let scripts = Scripts::load(&mut conn).await?;
                Ok((info, scripts))
            })
            .await?
            .map_err(BrokerError::Redis)?;
        let (major, minor, version) = server_version(&info).unwrap_or((0, 0, "unknown".to_owned()));
        if (major, minor) < MIN_VERSION {
            return Err(BrokerError::Version {
                found: version,
                needed: "4.0",
            });
        }
        let keys = &link.settings().keys;
        let layout = Layout::new(keys, queue_order, &worker, queues.snapshot());
        let layout = Mutex::new(Arc::new(layout));
        Ok(RedisBroker {
            single_moves: legacy_fetch,
            link,
            scripts,
            queues,
            layout,
            worker,
            turn: AtomicUsize::new(0),
            queue_order,
            max_message_size,
            #[cfg(feature = "fault-injection")]
            halt_after_take: std::env::var(fetch::HALT_AFTER_TAKE_ENV).is_ok_and(|v| v == "1"),
            stats,
        })
    }

    /// The broker's link.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The broker's key names.
    pub(crate) fn keys(&self) -> &RedisKeys {
        &self.link.settings().keys
    }

    /// The loaded scripts.
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// The layout of the current queue set, and whether it is new since
    /// the last call (its in-flight lists are then registered before the
    /// first take from them).
    fn layout(&self) -> (Arc<Layout>, bool) {
        let now = self.queues.snapshot();
        let mut cur = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&cur.queues, &now) {
            return (Arc::clone(&cur), false);
        }
        let fresh = Arc::new(Layout::new(
            self.keys(),
            self.queue_order,
            &self.worker,
            now,
        ));
        *cur = Arc::clone(&fresh);
        (fresh, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info() {
        let info = "# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\n";
        assert_eq!(server_version(info), Some((6, 0, "6.0.16".to_owned())));
        assert_eq!(server_version("nothing"), None);
    }

    #[test]
    fn layouts_rank_queues_by_the_strategy() {
        let queues = Arc::new(vec![
            ConsumedQueue::named("b"),
            ConsumedQueue::named("c"),
            ConsumedQueue::named("a"),
        ]);
        let keys = RedisKeys::default();
        for (order, rank) in [
            (QueueOrder::RoundRobin, [0, 1, 2]),
            (QueueOrder::Priority, [0, 1, 2]),
            (QueueOrder::Sorted, [2, 0, 1]),
        ] {
            let l = Layout::new(&keys, order, "w", Arc::clone(&queues));
            assert_eq!(l.rank, rank, "{order:?}");
            assert_eq!(l.pairs.len(), 3);
            assert_eq!(l.pairs[0].len(), 4);
        }
    }
}
