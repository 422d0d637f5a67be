//! One reconnecting Redis connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::{socket2, TcpSettings};
use redis::AsyncConnectionConfig;

use super::{Fault, LinkSettings};
use crate::error::BrokerError;

/// Run on every new connection before it is used (e.g. loading scripts).
pub(crate) type StartHook = Box<
    dyn Fn(MultiplexedConnection) -> Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>
        + Send
        + Sync,
>;

/// Why a call on a link failed.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) fault: Fault,
    pub(crate) error: redis::RedisError,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

#[derive(Debug)]
struct State {
    /// The live connection and its generation.
    conn: Option<(u64, MultiplexedConnection)>,
    generation: u64,
    /// When the current outage began.
    lost_at: Option<Instant>,
    /// Set once the link gave up; every later call fails with it.
    dead: Option<String>,
    /// With Sentinel: the failovers announced before the live connection
    /// was made; a later one makes it stale.
    switches_seen: u64,
}

/// A Redis connection that reconnects by itself (see the [module
/// docs](super)).
pub(crate) struct Link {
    /// What it is for, in log lines: "broker", "result backend".
    name: &'static str,
    /// The URL without password, for log lines.
    shown: String,
    /// The server's client: fixed, or (with Sentinel) the master's as of
    /// the last connection.
    client: Mutex<redis::Client>,
    /// The sentinels, for a `sentinel://` URL.
    sentinel: Option<std::sync::Arc<super::sentinel::SentinelTarget>>,
    /// Stops the sentinels' `+switch-master` watcher with the link.
    _watcher: Option<tokio_util::sync::DropGuard>,
    settings: LinkSettings,
    on_start: Option<StartHook>,
    state: Mutex<State>,
    /// Held by the one caller that reconnects; others wait on it.
    reconnecting: tokio::sync::Mutex<()>,
    /// Counts connections restored after a loss (the worker's metrics).
    reconnects: OnceLock<Counter>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.name)
            .field("url", &self.shown)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Link {
    /// Opens a link to `url`, retrying the first connection as
    /// `settings.retry_on_startup` says.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Url`] for a bad URL, [`BrokerError::Tls`] for TLS
    /// options that cannot be used; [`BrokerError::Refused`] at once for
    /// a wrong password or a failed TLS handshake; [`BrokerError::Connect`]
    /// or [`BrokerError::GaveUp`] when the server cannot be reached.
    pub(crate) async fn open(
        name: &'static str,
        url: &str,
        settings: LinkSettings,
        on_start: Option<StartHook>,
    ) -> Result<Self, BrokerError> {
        let tcp = TcpSettings::default().set_nodelay(true).set_keepalive(
            socket2::TcpKeepalive::new()
                .with_time(settings.keepalive_idle())
                .with_interval(Duration::from_secs(10))
                .with_retries(3),
        );
        let (client, sentinel) = if super::sentinel::is_sentinel(url) {
            let target = super::sentinel::SentinelTarget::from_url(url, &settings.sentinel, tcp)?;
            let placeholder =
                redis::Client::open(target.placeholder.clone()).map_err(BrokerError::Url)?;
            (placeholder, Some(std::sync::Arc::new(target)))
        } else {
            (super::tls::client_for(url, tcp)?, None)
        };
        let watcher = sentinel.as_ref().map(|target| {
            let stop = tokio_util::sync::CancellationToken::new();
            target.watch(name, stop.clone());
            stop.drop_guard()
        });
        let link = Link {
            name,
            shown: redact(url),
            client: Mutex::new(client),
            sentinel,
            _watcher: watcher,
            settings,
            on_start,
            state: Mutex::new(State {
                conn: None,
                generation: 0,
                lost_at: None,
                dead: None,
                switches_seen: 0,
            }),
            reconnecting: tokio::sync::Mutex::new(()),
            reconnects: OnceLock::new(),
        };
        match link.connect_first().await {
            Ok(()) => Ok(link),
            // Credentials or certificates that do not fit: not retried.
            Err(source) if Fault::refusal(&source).is_some() => Err(BrokerError::Refused {
                hint: Fault::refusal(&source).unwrap_or_default(),
                url: link.shown,
                source,
            }),
            Err(e) if !link.settings.retry_on_startup => Err(BrokerError::Connect(e)),
            Err(e) => {
                tracing::warn!(
                    "{}: cannot connect to {}: {e}; retrying (broker_connection_retry_on_startup)",
                    link.name,
                    link.shown
                );
                link.lock().lost_at = Some(Instant::now());
                link.recover().await?;
                Ok(link)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts each connection restored after a loss on `counter` from
    /// now on (a first connection retried at start is not a reconnect).
    /// Set once; later calls are ignored.
    pub(crate) fn count_reconnects(&self, counter: Counter) {
        let _ = self.reconnects.set(counter);
    }

    /// The reconnect counter, if one was set (subscribers made from this
    /// link count on it too).
    pub(crate) fn reconnect_counter(&self) -> Option<Counter> {
        self.reconnects.get().cloned()
    }

    /// The redis client (for pub/sub connections): with Sentinel, the
    /// master's as of the last connection.
    pub(crate) fn client(&self) -> redis::Client {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The sentinels of a `sentinel://` link (for its subscribers).
    pub(crate) fn sentinel(&self) -> Option<std::sync::Arc<super::sentinel::SentinelTarget>> {
        self.sentinel.clone()
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &LinkSettings {
        &self.settings
    }

    /// What the link is for and where it goes, for log lines.
    pub(crate) fn label(&self) -> String {
        format!("{} {}", self.name, self.shown)
    }

    /// The first connection. Without a start hook nothing was sent on
    /// it yet, so one PING shows a password the server wants (NOAUTH)
    /// now rather than at the first command; any other failure of the
    /// PING is left to the calls (a loss marked the link down).
    async fn connect_first(&self) -> redis::RedisResult<()> {
        self.connect_once().await?;
        if self.on_start.is_some() {
            return Ok(());
        }
        let ping = |mut c: MultiplexedConnection| async move {
            redis::cmd("PING").query_async::<()>(&mut c).await
        };
        match self.call(ping).await {
            Err(e) if Fault::refusal(&e.error).is_some() => Err(e.error),
            _ => Ok(()),
        }
    }

    /// Opens a new connection, runs the start hook and installs it.
    async fn connect_once(&self) -> redis::RedisResult<()> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.command_timeout));
        let switches = self.sentinel.as_ref().map_or(0, |t| t.switches());
        let client = match &self.sentinel {
            None => self.client(),
            Some(target) => {
                let client = tokio::time::timeout(self.settings.connect_timeout, target.master())
                    .await
                    .map_err(|_| {
                        redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no sentinel named the master in time",
                        ))
                    })??;
                let (was, now) = (
                    self.client().get_connection_info().addr().to_string(),
                    client.get_connection_info().addr().to_string(),
                );
                if was != now {
                    tracing::warn!("{}: the sentinels name {now} as the master", self.name);
                }
                *self.client.lock().unwrap_or_else(PoisonError::into_inner) = client.clone();
                client
            }
        };
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if let Some(hook) = &self.on_start {
            match tokio::time::timeout(self.settings.command_timeout, hook(conn.clone())).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                }
            }
        }
        let mut st = self.lock();
        st.generation += 1;
        st.conn = Some((st.generation, conn));
        st.switches_seen = switches;
        Ok(())
    }

    /// Marks connection `generation` lost (once; later reports of the same
    /// loss are ignored).
    fn mark_lost(&self, generation: u64, e: &redis::RedisError) {
        let mut st = self.lock();
        if st.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            st.conn = None;
            st.lost_at = Some(Instant::now());
            tracing::error!("{}: connection to {} lost: {e}", self.name, self.shown);
        }
    }

    /// Runs `f` on the current connection under the command timeout.
    /// A lost connection is marked down (call [`Link::recover`] before
    /// retrying); `NOSCRIPT` reloads the scripts first.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if let Some(target) = &self.sentinel {
            target.hold(self.name).await;
        }
        let (current, seen) = {
            let st = self.lock();
            (st.conn.clone(), st.switches_seen)
        };
        if let (Some(target), Some((generation, _))) = (&self.sentinel, &current) {
            if target.switches() != seen {
                // The sentinels announced a failover since this
                // connection was made: ask them again before writing.
                let error = redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the sentinels announced a new master",
                ));
                self.mark_lost(*generation, &error);
                return Err(CallError {
                    fault: Fault::Lost,
                    error,
                });
            }
        }
        let Some((generation, conn)) = current else {
            return Err(CallError {
                fault: Fault::Lost,
                error: redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "not connected",
                )),
            });
        };
        let result =
            match tokio::time::timeout(self.settings.command_timeout, f(conn.clone())).await {
                Ok(r) => r,
                Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no reply within {:?} (command_timeout)",
                        self.settings.command_timeout
                    ),
                ))),
            };
        result.map_err(|error| {
            let fault = match Fault::of(&error) {
                // Behind Sentinel a read-only or master-less server was
                // demoted: reconnect, and ask the sentinels again.
                Fault::Busy
                    if self.sentinel.is_some()
                        && matches!(error.code(), Some("READONLY" | "MASTERDOWN")) =>
                {
                    Fault::Lost
                }
                f => f,
            };
            match fault {
                Fault::Lost => self.mark_lost(generation, &error),
                Fault::NoScript => {
                    if let Some(hook) = &self.on_start {
                        // Reloaded in the background; the caller retries.
                        let reload = hook(conn);
                        tokio::spawn(async move {
                            let _ = reload.await;
                        });
                    }
                }
                Fault::Busy | Fault::Command => {}
            }
            CallError { fault, error }
        })
    }

    /// Waits until the link is connected: at once if it is, else
    /// reconnects with backoff (one caller at a time; others wait and
    /// share the outcome).
    ///
    /// # Errors
    ///
    /// [`BrokerError::GaveUp`] once the retries are used up (or at once
    /// with retries off); the link stays dead after that.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it between attempts leaves the link down and
    /// the next call resumes the count.
    pub(crate) async fn recover(&self) -> Result<(), BrokerError> {
        loop {
            {
                let st = self.lock();
                if let Some(why) = &st.dead {
                    return Err(BrokerError::GaveUp(why.clone()));
                }
                if st.conn.is_some() {
                    return Ok(());
                }
            }
            let Ok(_turn) = self.reconnecting.try_lock() else {
                // Someone else reconnects; wait for them, then look again.
                let _wait = self.reconnecting.lock().await;
                continue;
            };
            return self.reconnect().await;
        }
    }

    async fn reconnect(&self) -> Result<(), BrokerError> {
        let (since, was_up) = {
            let st = self.lock();
            (st.lost_at.unwrap_or_else(Instant::now), st.generation > 0)
        };
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let err = match self.connect_once().await {
                Ok(()) => {
                    if let Some(c) = self.reconnects.get().filter(|_| was_up) {
                        c.inc();
                    }
                    tracing::warn!(
                        "{}: connection to {} restored after {:.1} s",
                        self.name,
                        self.shown,
                        since.elapsed().as_secs_f64()
                    );
                    self.lock().lost_at = None;
                    return Ok(());
                }
                Err(e) => e,
            };
            let out_of_tries =
                !self.settings.retry || self.settings.max_retries.is_some_and(|max| attempt >= max);
            if out_of_tries {
                let why = format!(
                    "gave up on {} {} after {attempt} attempt(s) over {:.1} s: {err}",
                    self.name,
                    self.shown,
                    since.elapsed().as_secs_f64()
                );
                tracing::error!("{why}");
                self.lock().dead = Some(why.clone());
                return Err(BrokerError::GaveUp(why));
            }
            let delay = self.settings.backoff.delay(attempt);
            let of = self
                .settings
                .max_retries
                .map_or_else(|| "∞".to_owned(), |m| m.to_string());
            tracing::warn!(
                "{}: cannot reach {} ({err}); retrying in {:.1} s (attempt {attempt}/{of})",
                self.name,
                self.shown,
                delay.as_secs_f64()
            );
            match &self.sentinel {
                Some(target) => target.backoff(delay).await,
                None => tokio::time::sleep(delay).await,
            }
        }
    }

    /// Runs `cmd` (a batch of writes) until it is done, as
    /// [`call_until_done`](Self::call_until_done) does; with
    /// `sync_replicas` set, the same round trip then `WAIT`s for that
    /// many replicas, and a batch fewer replicas confirm in time reads as
    /// a lost connection: the link reconnects (with Sentinel, to the
    /// master the sentinels name then) and writes the batch again. Every
    /// batch written this way must be idempotent.
    pub(crate) async fn write_until_done(
        &self,
        describe: &str,
        cmd: &redis::Cmd,
    ) -> Result<Result<(), redis::RedisError>, BrokerError> {
        let sync = self.settings.sync_replicas;
        self.call_until_done(describe, |mut conn| async move {
            let Some((replicas, timeout)) = sync else {
                return cmd.query_async::<redis::Value>(&mut conn).await.map(drop);
            };
            let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let (_, acked): (redis::Value, u64) = redis::pipe()
                .add_command(cmd.clone())
                .cmd("WAIT")
                .arg(replicas)
                .arg(millis)
                .query_async(&mut conn)
                .await?;
            if acked < u64::from(replicas) {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{acked} of the {replicas} replica(s) asked for (--sync-replicas) \
                         confirmed a write within {millis} ms; writing it again"
                    ),
                )));
            }
            Ok(())
        })
        .await
    }

    /// Calls `f` until it succeeds: reconnecting after a loss, waiting
    /// after a busy reply. Returns early with the error of a command that
    /// retrying will not fix, or when the link gives up.
    ///
    /// `describe` names the operation in the one log line written when a
    /// busy server first refuses it.
    pub(crate) async fn call_until_done<T, F, Fut>(
        &self,
        describe: &str,
        mut f: F,
    ) -> Result<Result<T, redis::RedisError>, BrokerError>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut busy: u32 = 0;
        loop {
            self.recover().await?;
            match self.call(&mut f).await {
                Ok(v) => {
                    if busy > 0 {
                        tracing::warn!("{}: {describe} went through again", self.name);
                    }
                    return Ok(Ok(v));
                }
                Err(CallError {
                    fault: Fault::Command,
                    error,
                }) => return Ok(Err(error)),
                Err(CallError {
                    fault: Fault::Busy,
                    error,
                }) => {
                    busy = busy.saturating_add(1);
                    let delay = self.settings.backoff.delay(busy);
                    if busy == 1 {
                        tracing::error!(
                            "{}: {describe} refused by the server ({error}); holding it and retrying",
                            self.name
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(CallError {
                    fault: Fault::NoScript,
                    ..
                }) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(CallError {
                    fault: Fault::Lost, ..
                }) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Backoff;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379/0"), "redis://host:6379/0");
    }

    #[tokio::test]
    async fn gives_up_on_a_closed_port_when_retries_are_off() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let mut settings = LinkSettings::client();
        settings.retry_on_startup = true;
        settings.max_retries = Some(2);
        settings.backoff = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let r = Link::open(
            "broker",
            &format!("redis://127.0.0.1:{port}/0"),
            settings,
            None,
        )
        .await;
        match r {
            Err(BrokerError::GaveUp(why)) => assert!(why.contains("2 attempt"), "{why}"),
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }
}
