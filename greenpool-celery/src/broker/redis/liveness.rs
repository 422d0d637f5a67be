//! The worker's liveness: its liveness key (set with an expiry, refreshed
//! while it runs), its registration in the set of workers with the
//! in-flight lists it takes into, and the return of in-flight lists to
//! their queues: its own at start and at a clean stop, and those of any
//! other worker whose liveness key is gone (at start and at every restore
//! sweep), through the [`RETURN`](super::scripts::RETURN) script.

use std::collections::HashMap;
use std::time::Duration;

use super::{write_pipe, Layout, RedisBroker};
use crate::error::BrokerError;

/// How long a worker's liveness key lives without a refresh; once it is
/// gone, other workers return the worker's in-flight lists.
pub(crate) const LIVENESS_TTL: Duration = Duration::from_secs(60);

/// How often a running worker refreshes its liveness key.
pub(crate) const LIVENESS_REFRESH: Duration = Duration::from_secs(10);

impl RedisBroker {
    /// Adds the in-flight lists of `layout` to this worker's registered
    /// lists (never removes any: a cancelled queue's leftovers are still
    /// returned at the next start or by another worker).
    pub(super) async fn register_lists(&self, layout: &Layout) -> Result<(), BrokerError> {
        let mut hset = redis::cmd("HSET");
        hset.arg(self.keys().inflight_hash(&self.worker));
        let mut any = false;
        for p in layout.pairs.iter().flatten() {
            hset.arg(&p.key).arg(&p.flight);
            any = true;
        }
        if !any {
            return Ok(());
        }
        self.stats.round_trip();
        self.link
            .call_until_done("registering in-flight lists", |mut conn| {
                let hset = &hset;
                async move { hset.query_async::<()>(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)
    }

    /// At start: returns this worker's in-flight lists (left by an earlier
    /// run that died between the steps of a fetch, under this name) to
    /// the front of their queues, then sets its liveness key and registers
    /// its lists so that others can return them if it dies. Returns how
    /// many messages went back.
    pub(crate) async fn register(&self) -> Result<u64, BrokerError> {
        let hash = self.keys().inflight_hash(&self.worker);
        let earlier = self.registered_lists().await?;
        let (layout, _) = self.layout();
        let mut all: Vec<(String, String)> = layout
            .pairs
            .iter()
            .flatten()
            .map(|p| (p.key.clone(), p.flight.clone()))
            .collect();
        for (key, flight) in earlier {
            if !all.iter().any(|(k, f)| *k == key && *f == flight) {
                all.push((key, flight));
            }
        }
        let back = self.give_back(&self.worker, &all, true).await?.unwrap_or(0);
        if back > 0 {
            tracing::warn!(
                "Returned {back} message(s) a previous run of {} took but never recorded",
                self.worker
            );
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.keys().alive_key(&self.worker))
            .arg("1")
            .arg("EX")
            .arg(LIVENESS_TTL.as_secs())
            .ignore();
        pipe.cmd("DEL").arg(&hash).ignore();
        let mut hset = redis::cmd("HSET");
        hset.arg(&hash);
        for p in layout.pairs.iter().flatten() {
            hset.arg(&p.key).arg(&p.flight);
        }
        pipe.add_command(hset).ignore();
        pipe.cmd("SADD")
            .arg(self.keys().workers())
            .arg(&self.worker)
            .ignore();
        self.stats.round_trip();
        write_pipe(&self.link, "registering the worker", &pipe).await?;
        Ok(back)
    }

    /// Refreshes this worker's liveness key.
    pub(crate) async fn refresh_liveness(&self) -> Result<(), BrokerError> {
        let key = self.keys().alive_key(&self.worker);
        self.stats.round_trip();
        self.link
            .call(|mut conn| {
                let key = &key;
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg("1")
                        .arg("EX")
                        .arg(LIVENESS_TTL.as_secs())
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))
    }

    /// This worker's registered `(queue key, in-flight list)` pairs.
    async fn registered_lists(&self) -> Result<Vec<(String, String)>, BrokerError> {
        let hash = self.keys().inflight_hash(&self.worker);
        self.stats.round_trip();
        self.link
            .call_until_done("reading the in-flight lists", |mut conn| {
                let hash = &hash;
                async move { redis::cmd("HGETALL").arg(hash).query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)
    }

    /// At a clean stop, once no fetch runs: returns whatever is still in
    /// this worker's in-flight lists (nothing, unless the last record
    /// failed) and forgets the worker.
    pub(crate) async fn unregister(&self) -> Result<(), BrokerError> {
        // Every list registered, also those of queues cancelled since.
        let all = self.registered_lists().await?;
        self.give_back(&self.worker, &all, true).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SREM")
            .arg(self.keys().workers())
            .arg(&self.worker)
            .ignore();
        pipe.cmd("DEL")
            .arg(self.keys().inflight_hash(&self.worker))
            .arg(self.keys().alive_key(&self.worker))
            .ignore();
        self.stats.round_trip();
        self.link
            .call(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))
    }

    /// Returns the in-flight lists of every other worker whose liveness
    /// key is gone. Returns how many messages went back.
    pub(crate) async fn return_dead(&self) -> Result<u64, BrokerError> {
        self.stats.round_trip();
        let set = self.keys().workers();
        let set = set.as_str();
        let workers: Vec<String> =
            self.link
                .call(|mut conn| async move {
                    redis::cmd("SMEMBERS").arg(set).query_async(&mut conn).await
                })
                .await
                .map_err(|e| BrokerError::Redis(e.error))?;
        let others: Vec<String> = workers.into_iter().filter(|w| *w != self.worker).collect();
        if others.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for w in &others {
            pipe.cmd("EXISTS").arg(self.keys().alive_key(w));
            pipe.cmd("HGETALL").arg(self.keys().inflight_hash(w));
        }
        self.stats.round_trip();
        let found: Vec<(bool, HashMap<String, String>)> = self
            .link
            .call(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(|e| BrokerError::Redis(e.error))?;
        let mut total = 0;
        for (w, (alive, lists)) in others.iter().zip(found) {
            if alive {
                continue;
            }
            let mut lists: Vec<(String, String)> = lists.into_iter().collect();
            lists.sort();
            if let Some(n) = self.give_back(w, &lists, false).await? {
                if n > 0 {
                    tracing::warn!(
                        "Returned {n} message(s) taken by worker {w}, which is gone, to their queues"
                    );
                }
                total += n;
            }
        }
        Ok(total)
    }

    /// Runs [`RETURN`](super::scripts::RETURN) for `worker`'s `lists`
    /// (queue key, in-flight list). `None` when the worker is alive.
    async fn give_back(
        &self,
        worker: &str,
        lists: &[(String, String)],
        own: bool,
    ) -> Result<Option<u64>, BrokerError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.scripts.give_back)
            .arg(3 + 2 * lists.len())
            .arg(self.keys().alive_key(worker))
            .arg(self.keys().workers())
            .arg(self.keys().inflight_hash(worker));
        for (key, flight) in lists {
            cmd.arg(key).arg(flight);
        }
        cmd.arg(worker).arg(if own { "1" } else { "0" });
        self.stats.round_trip();
        let n: i64 = self
            .link
            .call_until_done("returning in-flight messages", |mut conn| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        Ok(u64::try_from(n).ok())
    }
}
