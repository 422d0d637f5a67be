//! Results of a worker on AMQP in a Redis result backend: a batcher on a
//! link of its own, which the AMQP outbox flushes before each round's
//! acks ([`outbox`](super::outbox)). Chord parts are joined there too; a
//! concluded chord's messages come back to the outbox ([`Concluded`]),
//! which publishes them before that round's acks. Without the `redis` feature there is
//! no such backend: a result backend URL other than rpc:// (or the
//! broker's own) stops the worker with
//! [`BrokerError::NotCompiled`](crate::BrokerError::NotCompiled).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::WorkerConfig;
use crate::conn::LinkSettings;
use crate::error::WorkerError;
use crate::metrics::WorkerMetrics;
use crate::outbox::ResultStore;
use crate::stats::BrokerStats;

/// The Redis result backend's batcher.
#[cfg(feature = "redis")]
pub(crate) use crate::broker::redis::batch::Batcher as ResultsBatcher;

/// A concluded chord's messages and keys, from the backend's batcher.
#[cfg(feature = "redis")]
pub(crate) use crate::broker::redis::writes::Concluded;

/// Without the `redis` feature no chord is joined.
#[cfg(not(feature = "redis"))]
#[derive(Debug)]
pub(crate) enum Concluded {}

/// Where the outbox receives concluded chords.
pub(crate) type Forwarded = mpsc::UnboundedReceiver<Concluded>;

/// A concluded chord's messages, the delivery whose ack waits for them,
/// and the chord's keys.
#[cfg(feature = "redis")]
pub(crate) fn parts(c: Concluded) -> (Vec<crate::broker::Publish>, Option<String>, String) {
    (c.publish, c.origin, c.group)
}

/// Never runs: there is no value to call it with.
#[cfg(not(feature = "redis"))]
pub(crate) fn parts(c: Concluded) -> (Vec<crate::broker::Publish>, Option<String>, String) {
    match c {}
}

/// Without the `redis` feature no Redis result backend, hence no batcher,
/// can exist.
#[cfg(not(feature = "redis"))]
#[derive(Debug)]
pub(crate) enum ResultsBatcher {}

#[cfg(not(feature = "redis"))]
impl ResultsBatcher {
    /// Never runs: there is no value to call it on.
    pub(crate) async fn flush(&self) {
        match *self {}
    }

    /// Never runs: there is no value to call it on.
    pub(crate) async fn close(&self) {
        match *self {}
    }

    /// Never runs: there is no value to call it on.
    pub(crate) fn delete(&self, _keys: Vec<String>) {
        match *self {}
    }
}

/// Opens the Redis result backend at `url`: its link (loading the
/// scripts on every connection), the batcher writing through it, and
/// where its concluded chords come out.
#[cfg(feature = "redis")]
pub(crate) async fn open(
    url: &str,
    settings: LinkSettings,
    config: &WorkerConfig,
    stats: &Arc<BrokerStats>,
    metrics: &WorkerMetrics,
) -> Result<(Arc<ResultsBatcher>, Forwarded), WorkerError> {
    use crate::broker::redis::batch::Targets;
    use crate::broker::redis::scripts::Scripts;
    use crate::conn::Link;
    use crate::error::BrokerError;

    let settings = LinkSettings {
        sentinel: config.redis.backend_sentinel.clone(),
        ..settings
    };
    let link = Arc::new(Link::open("result backend", url, settings, Some(Scripts::hook())).await?);
    link.count_reconnects(metrics.reconnects.counter("result backend"));
    let scripts = link
        .call_until_done("loading the scripts", |mut conn| async move {
            Scripts::load(&mut conn).await
        })
        .await?
        .map_err(BrokerError::Redis)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let batcher = Arc::new(ResultsBatcher::spawn(
        Targets {
            broker: link,
            backend: None,
            scripts,
            result_expires: config.result_expires.map_or(0, |d| d.as_secs()),
            forward: Some(tx),
        },
        Arc::clone(stats),
    ));
    Ok((batcher, rx))
}

/// Refuses the result backend at `url`: without the `redis` feature only
/// rpc:// results exist.
#[cfg(not(feature = "redis"))]
pub(crate) async fn open(
    url: &str,
    _settings: LinkSettings,
    _config: &WorkerConfig,
    _stats: &Arc<BrokerStats>,
    _metrics: &WorkerMetrics,
) -> Result<(Arc<ResultsBatcher>, Forwarded), WorkerError> {
    Err(crate::broker::backend_left_out(url).into())
}

/// The worker's result store writing through `batcher`.
#[cfg(feature = "redis")]
pub(crate) fn store(batcher: &Arc<ResultsBatcher>) -> ResultStore {
    ResultStore::Redis(crate::backend::RedisBackend::with_batcher(Arc::clone(
        batcher,
    )))
}

/// Never runs: there is no batcher to call it with.
#[cfg(not(feature = "redis"))]
pub(crate) fn store(batcher: &Arc<ResultsBatcher>) -> ResultStore {
    match **batcher {}
}
