//! A link whose server is the master Redis Sentinel names: Celery's
//! `sentinel://host:port/db;sentinel://host2:port/db` URLs, with the
//! master's name (and the sentinels' password) from the transport
//! options. The master is asked for again on every connection, so a
//! reconnect after a failover reaches the new one; the redis crate's
//! sentinel client checks that the server it names calls itself master
//! (`ROLE`).
//!
//! A watcher subscribed to every sentinel's events holds the link's
//! calls from the moment the sentinel leading a failover says it is
//! about to promote a replica (`+failover-state-send-slaveof-noone`)
//! until the sentinels announce the new master (`+switch-master`) or
//! give the failover up (`-failover-abort-*`), [`HOLD_LIMIT`] at most.
//! Writes then never reach a master that is being demoted while it
//! still answers (what it took after the promotion would be lost), and
//! the link reconnects to the new master as soon as it is announced.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::SentinelOptions;
use crate::error::BrokerError;

/// Whether `url` is a Sentinel URL.
pub(crate) fn is_sentinel(url: &str) -> bool {
    url.get(..11)
        .is_some_and(|s| s.eq_ignore_ascii_case("sentinel://"))
}

fn bad(what: &str, detail: String) -> BrokerError {
    BrokerError::Url(redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid sentinel URL",
        format!("{what}: {detail}"),
    )))
}

/// The sentinels of a link and the master they name.
pub(crate) struct SentinelTarget {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    node: SentinelNodeConnectionInfo,
    /// Each sentinel's address, for the watcher.
    addresses: Vec<ConnectionInfo>,
    /// What the watcher learnt of failovers, shared with it.
    failover: Arc<FailoverState>,
    /// The first sentinel's address with the master's database: the
    /// client a link holds before it first connects.
    pub(crate) placeholder: ConnectionInfo,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl SentinelTarget {
    /// Reads `url` (`;`-separated `sentinel://` URLs; the password and
    /// database are the master's) with `opts`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Url`] for a URL that does not parse or options
    /// without `master_name`; [`BrokerError::Tls`] for Celery's `ssl_*`
    /// keys (the sentinels and their master are reached over plain TCP).
    pub(crate) fn from_url(
        url: &str,
        opts: &SentinelOptions,
        tcp: TcpSettings,
    ) -> Result<Self, BrokerError> {
        if super::tls::has_tls_options(url) {
            return Err(BrokerError::Tls {
                url: super::link::redact(url),
                problem: "TLS to Sentinel and its master is not supported: use a rediss:// URL \
                          of the master, or drop the ssl_* keys"
                    .to_owned(),
            });
        }
        let master = opts.master_name.clone().ok_or_else(|| {
            bad(
                "sentinel:// needs the master's name",
                "set master_name in the transport options, e.g. \
                 --broker-transport-options '{\"master_name\": \"mymaster\"}'"
                    .to_owned(),
            )
        })?;
        let mut sentinels = Vec::new();
        let mut master_info: Option<RedisConnectionInfo> = None;
        for part in url.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if !is_sentinel(part) {
                return Err(bad(
                    "each address must start with sentinel://",
                    part.to_owned(),
                ));
            }
            let as_redis = format!("redis://{}", &part[11..]);
            let info = as_redis
                .as_str()
                .into_connection_info()
                .map_err(BrokerError::Url)?;
            if master_info.is_none() {
                master_info = Some(info.redis_settings().clone());
            }
            let mut s = RedisConnectionInfo::default();
            if let Some(p) = &opts.sentinel_password {
                s = s.set_password(p);
            }
            sentinels.push(info.set_redis_settings(s).set_tcp_settings(tcp.clone()));
        }
        let (Some(first), Some(master_info)) = (sentinels.first().cloned(), master_info) else {
            return Err(bad("no sentinel address", url.to_owned()));
        };
        let placeholder = first.set_redis_settings(master_info.clone());
        let addresses = sentinels.clone();
        let sentinel = Sentinel::build(sentinels).map_err(BrokerError::Url)?;
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(master_info)
            .set_tcp_settings(tcp);
        Ok(SentinelTarget {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master,
            node,
            addresses,
            failover: Arc::new(FailoverState::default()),
            placeholder,
        })
    }

    /// How many new masters the sentinels have announced so far.
    pub(crate) fn switches(&self) -> u64 {
        self.failover.switches.load(Ordering::Acquire)
    }

    /// Returns once a new master was announced after the `seen`-th.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn switched_since(&self, seen: u64) {
        loop {
            let next = self.failover.switched.notified();
            if self.switches() != seen {
                return;
            }
            next.await;
        }
    }

    /// Sleeps `delay`, or less when a new master is announced meanwhile
    /// (a reconnection's backoff need not outlast the failover).
    pub(crate) async fn backoff(&self, delay: Duration) {
        let seen = self.switches();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.switched_since(seen) => {}
        }
    }

    /// Returns at once unless a failover is under way; then waits until
    /// the sentinels announce its end, [`HOLD_LIMIT`] at most.
    pub(crate) async fn hold(&self, name: &str) {
        let f = &self.failover;
        if !f.promoting.load(Ordering::Acquire) {
            return;
        }
        let waited = tokio::time::timeout(HOLD_LIMIT, async {
            loop {
                let ended = f.ended.notified();
                if !f.promoting.load(Ordering::Acquire) {
                    return;
                }
                ended.await;
            }
        })
        .await;
        if waited.is_err() && f.promoting.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                "{name}: no sentinel announced the end of the failover within {HOLD_LIMIT:?}; \
                 going on"
            );
        }
    }

    /// Starts the watcher: one subscriber per sentinel, until `stop` is
    /// cancelled.
    pub(crate) fn watch(&self, name: &'static str, stop: tokio_util::sync::CancellationToken) {
        for info in &self.addresses {
            let (info, master, state, stop) = (
                info.clone(),
                self.master.clone(),
                Arc::clone(&self.failover),
                stop.clone(),
            );
            tokio::spawn(async move {
                stop.run_until_cancelled(watch_one(name, info, master, state))
                    .await;
            });
        }
    }

    /// Asks the sentinels where the master is now; a client for it.
    ///
    /// # Errors
    ///
    /// No sentinel answers, none knows the master, or the server named
    /// does not call itself master.
    pub(crate) async fn master(&self) -> redis::RedisResult<redis::Client> {
        if let Some((host, port)) = self.failover.recent_switch() {
            let info = self
                .placeholder
                .clone()
                .set_addr(redis::ConnectionAddr::Tcp(host, port));
            let client = redis::Client::open(info)?;
            if is_master(&client).await {
                return Ok(client);
            }
        }
        let mut s = self.sentinel.lock().await;
        s.async_master_for(&self.master, Some(&self.node)).await
    }
}

/// Whether the server of `client` answers `ROLE` as a master.
async fn is_master(client: &redis::Client) -> bool {
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let role: redis::RedisResult<Vec<redis::Value>> =
        redis::cmd("ROLE").query_async(&mut conn).await;
    matches!(role.as_deref(), Ok([first, ..]) if redis::from_redis_value_ref::<String>(first).is_ok_and(|r| r == "master"))
}

/// Longest a link holds its calls for a failover the sentinels do not
/// announce the end of.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(15);

/// How long a `+switch-master` announcement is preferred to what a
/// sentinel answers: a sentinel asked just after a failover may still
/// name the old master, which answers as one until it is demoted.
const ANNOUNCED_TRUST: Duration = Duration::from_secs(30);

/// The sentinels' channels the watcher reads.
const CHANNELS: [&str; 5] = [
    "+switch-master",
    "+failover-state-send-slaveof-noone",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
];

/// What the watcher learnt of failovers.
#[derive(Debug, Default)]
struct FailoverState {
    /// A replica is being promoted: hold calls.
    promoting: AtomicBool,
    /// Woken when `promoting` is cleared.
    ended: tokio::sync::Notify,
    /// New masters announced.
    switches: AtomicU64,
    /// Woken when `switches` grows.
    switched: tokio::sync::Notify,
    /// The last `+switch-master` payload, so that the same announcement
    /// from several sentinels counts once.
    last: Mutex<String>,
    /// The new master last announced, and when.
    announced: Mutex<Option<(String, u16, std::time::Instant)>>,
}

impl FailoverState {
    fn apply(&self, name: &str, event: Event, payload: &str) {
        match event {
            Event::Promoting => {
                if !self.promoting.swap(true, Ordering::AcqRel) {
                    tracing::warn!("{name}: a failover is under way ({payload}); holding calls");
                }
            }
            Event::Switched => {
                let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
                if *last != payload {
                    payload.clone_into(&mut last);
                    let mut words = payload.split_ascii_whitespace().skip(3);
                    if let (Some(host), Some(Ok(port))) =
                        (words.next(), words.next().map(str::parse::<u16>))
                    {
                        *self
                            .announced
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) =
                            Some((host.to_owned(), port, std::time::Instant::now()));
                    }
                    tracing::warn!("{name}: the sentinels announce a new master: {payload}");
                    self.switches.fetch_add(1, Ordering::AcqRel);
                    self.switched.notify_waiters();
                }
                drop(last);
                self.end();
            }
            Event::Aborted => {
                tracing::warn!("{name}: the failover was given up ({payload})");
                self.end();
            }
        }
    }

    /// The new master announced less than [`ANNOUNCED_TRUST`] ago.
    fn recent_switch(&self) -> Option<(String, u16)> {
        let a = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        a.as_ref()
            .filter(|(_, _, at)| at.elapsed() < ANNOUNCED_TRUST)
            .map(|(h, p, _)| (h.clone(), *p))
    }

    fn end(&self) {
        self.promoting.store(false, Ordering::Release);
        self.ended.notify_waiters();
    }
}

/// What a sentinel's message says about a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A replica is about to be promoted.
    Promoting,
    /// A new master is in place.
    Switched,
    /// The failover was given up.
    Aborted,
}

/// The event a message on `channel` is for `master`, if any. Payloads:
/// `+switch-master`: `<name> <old-ip> <old-port> <new-ip> <new-port>`;
/// the others: `<type> <name> <ip> <port>`, followed by `@ <master>
/// <ip> <port>` when the instance is not the master itself.
fn event_of(channel: &str, payload: &str, master: &str) -> Option<Event> {
    let words: Vec<&str> = payload.split_ascii_whitespace().collect();
    if channel == "+switch-master" {
        return (words.len() == 5 && words.first() == Some(&master)).then_some(Event::Switched);
    }
    let named = match words.iter().position(|w| *w == "@") {
        Some(at) => words.get(at.saturating_add(1)),
        None => words.get(1),
    };
    if named != Some(&master) {
        return None;
    }
    match channel {
        "+failover-state-send-slaveof-noone" => Some(Event::Promoting),
        c if c.starts_with("-failover-abort-") => Some(Event::Aborted),
        _ => None,
    }
}

/// Reads one sentinel's events into `state`, reconnecting when it is
/// lost.
async fn watch_one(
    name: &'static str,
    info: ConnectionInfo,
    master: String,
    state: Arc<FailoverState>,
) {
    loop {
        let subscribed = async {
            let client = redis::Client::open(info.clone())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&CHANNELS[..]).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(mut ps)) = tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            let mut messages = ps.on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload().unwrap_or_default();
                if let Some(event) = event_of(msg.get_channel_name(), &payload, &master) {
                    state.apply(name, event, &payload);
                }
            }
        }
        // This sentinel is gone or not there yet: look again soon.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_for_their_master_only() {
        let m = "mymaster";
        let switch = "+switch-master";
        let ev = |c, p| event_of(c, p, m);
        assert_eq!(
            ev(switch, "mymaster 127.0.0.1 6379 127.0.0.1 6380"),
            Some(Event::Switched)
        );
        assert_eq!(ev(switch, "other 127.0.0.1 6379 127.0.0.1 6380"), None);
        assert_eq!(ev(switch, "mymaster"), None);
        assert_eq!(ev(switch, ""), None);
        let promoting = "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379";
        assert_eq!(
            ev("+failover-state-send-slaveof-noone", promoting),
            Some(Event::Promoting)
        );
        let other = "slave 127.0.0.1:6380 127.0.0.1 6380 @ other 127.0.0.1 6379";
        assert_eq!(ev("+failover-state-send-slaveof-noone", other), None);
        assert_eq!(
            ev(
                "-failover-abort-no-good-slave",
                "master mymaster 127.0.0.1 6379"
            ),
            Some(Event::Aborted)
        );
        assert_eq!(ev("+failover-end", "master mymaster 127.0.0.1 6379"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_held_from_a_promotion_to_the_new_master() {
        let opts = SentinelOptions {
            master_name: Some("m".into()),
            sentinel_password: None,
        };
        let t = std::sync::Arc::new(
            SentinelTarget::from_url("sentinel://127.0.0.1:1/0", &opts, TcpSettings::default())
                .unwrap(),
        );
        t.hold("test").await; // nothing under way: at once
        t.failover.apply("test", Event::Promoting, "p");
        let held = tokio::spawn({
            let t = std::sync::Arc::clone(&t);
            async move { t.hold("test").await }
        });
        tokio::task::yield_now().await;
        assert!(!held.is_finished());
        let switch = "m 127.0.0.1 1 127.0.0.1 2";
        t.failover.apply("test", Event::Switched, switch);
        t.failover.apply("test", Event::Switched, switch); // from another sentinel
        held.await.unwrap();
        assert_eq!(t.switches(), 1);
        // A promotion nobody ends is held for HOLD_LIMIT only.
        t.failover.apply("test", Event::Promoting, "p");
        let before = tokio::time::Instant::now();
        t.hold("test").await;
        assert_eq!(before.elapsed(), HOLD_LIMIT);
        assert!(!t.failover.promoting.load(Ordering::Acquire));
    }

    #[test]
    fn reads_celerys_urls_and_needs_a_master_name() {
        let opts = SentinelOptions {
            master_name: Some("mymaster".into()),
            sentinel_password: None,
        };
        let url = "sentinel://:pw@127.0.0.1:26379/3;sentinel://127.0.0.1:26380/3";
        let t = SentinelTarget::from_url(url, &opts, TcpSettings::default()).unwrap();
        assert_eq!(t.placeholder.redis_settings().db(), 3);
        assert_eq!(t.placeholder.redis_settings().password(), Some("pw"));
        assert!(is_sentinel("SENTINEL://x:1"));
        let none = SentinelOptions::default();
        let e = SentinelTarget::from_url(url, &none, TcpSettings::default()).unwrap_err();
        assert!(e.to_string().contains("master_name"), "{e}");
        let e = SentinelTarget::from_url(
            "sentinel://:pw@h:1/0?ssl_cert_reqs=required",
            &opts,
            TcpSettings::default(),
        )
        .unwrap_err();
        assert!(matches!(e, BrokerError::Tls { .. }), "{e}");
        assert!(
            e.to_string().contains("rediss://") && !e.to_string().contains("pw@"),
            "{e}"
        );
        assert!(SentinelTarget::from_url(
            "sentinel://a:1;redis://b:2",
            &opts,
            TcpSettings::default()
        )
        .is_err());
    }
}
