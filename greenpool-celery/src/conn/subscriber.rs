//! A pub/sub subscriber that reconnects and subscribes again by itself.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use super::sentinel::SentinelTarget;
use super::{Link, LinkSettings};
use crate::error::BrokerError;

/// What [`Subscriber::next`] yields.
#[derive(Debug)]
pub(crate) enum SubscriberEvent {
    /// A message on one of the channels or patterns.
    Message(redis::Msg),
    /// The connection was lost and is back, subscribed again: anything
    /// published meanwhile is gone, so re-read the state it would have
    /// told about.
    Resubscribed,
}

/// Subscribed to channels and patterns over its own connection, with the
/// reconnection policy of the [`Link`] it was made from.
pub(crate) struct Subscriber {
    client: redis::Client,
    /// With Sentinel: where the master is asked for on each connection,
    /// and the failovers announced before the current one was made (a
    /// later one moves the subscription to the new master).
    sentinel: Option<Arc<SentinelTarget>>,
    seen: u64,
    settings: LinkSettings,
    label: String,
    channels: Vec<String>,
    patterns: Vec<String>,
    pubsub: Option<redis::aio::PubSub>,
    /// Whether a subscription ever stood (a lazy one starts without).
    connected: bool,
    /// The link's reconnect counter (the worker's metrics), if any.
    reconnects: Option<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("label", &self.label)
            .field("channels", &self.channels)
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Subscribes to `channels` and `patterns` on `link`'s server.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Connect`] or [`BrokerError::Redis`] when the first
    /// subscription fails.
    pub(crate) async fn subscribe(
        link: &Link,
        channels: Vec<String>,
        patterns: Vec<String>,
    ) -> Result<Self, BrokerError> {
        let mut s = Subscriber {
            client: link.client().clone(),
            sentinel: link.sentinel(),
            seen: 0,
            settings: link.settings().clone(),
            label: link.label(),
            channels,
            patterns,
            pubsub: None,
            connected: true,
            reconnects: link.reconnect_counter(),
        };
        s.pubsub = Some(s.open().await?);
        Ok(s)
    }

    /// A subscriber to `channels` and `patterns` on `link`'s server that
    /// connects on its first [`next`](Self::next), under the same
    /// reconnection policy as later losses; that first `next` yields
    /// [`SubscriberEvent::Resubscribed`] once subscribed, so a caller
    /// re-reads the state it waits on only after it can no longer miss a
    /// message. Used where a connection cut during the first subscription
    /// must not end the wait (a result wait).
    pub(crate) fn lazy(link: &Link, channels: Vec<String>, patterns: Vec<String>) -> Self {
        Subscriber {
            client: link.client().clone(),
            sentinel: link.sentinel(),
            seen: 0,
            settings: link.settings().clone(),
            label: link.label(),
            channels,
            patterns,
            pubsub: None,
            connected: false,
            reconnects: link.reconnect_counter(),
        }
    }

    async fn open(&mut self) -> Result<redis::aio::PubSub, BrokerError> {
        let t = self.settings.connect_timeout;
        let pubsub = async {
            let client = match &self.sentinel {
                Some(target) => {
                    self.seen = target.switches();
                    target.master().await?
                }
                None => self.client.clone(),
            };
            client.get_async_pubsub().await
        };
        let mut ps = match tokio::time::timeout(t, pubsub).await {
            Ok(r) => r.map_err(BrokerError::Connect)?,
            Err(_) => {
                return Err(BrokerError::Connect(redis::RedisError::from(
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                )))
            }
        };
        for c in &self.channels {
            ps.subscribe(c).await.map_err(BrokerError::Redis)?;
        }
        for p in &self.patterns {
            ps.psubscribe(p).await.map_err(BrokerError::Redis)?;
        }
        Ok(ps)
    }

    /// The next message, or [`SubscriberEvent::Resubscribed`] after a
    /// reconnection.
    ///
    /// # Errors
    ///
    /// [`BrokerError::GaveUp`] when reconnecting failed as often as the
    /// settings allow.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message not yet returned stays queued.
    pub(crate) async fn next(&mut self) -> Result<SubscriberEvent, BrokerError> {
        if let Some(ps) = &mut self.pubsub {
            let switched = async {
                match &self.sentinel {
                    Some(target) => target.switched_since(self.seen).await,
                    None => std::future::pending().await,
                }
            };
            let mut messages = ps.on_message();
            tokio::select! {
                msg = messages.next() => {
                    if let Some(msg) = msg {
                        return Ok(SubscriberEvent::Message(msg));
                    }
                    tracing::error!("pub/sub connection to {} lost", self.label);
                }
                () = switched => {
                    tracing::warn!("pub/sub {}: following the new master", self.label);
                }
            }
            drop(messages);
            self.pubsub = None;
        }
        let since = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            match self.open().await {
                Ok(ps) => {
                    if self.connected {
                        if let Some(c) = &self.reconnects {
                            c.inc();
                        }
                        tracing::warn!(
                            "pub/sub connection to {} restored after {:.1} s",
                            self.label,
                            since.elapsed().as_secs_f64()
                        );
                    }
                    self.connected = true;
                    self.pubsub = Some(ps);
                    return Ok(SubscriberEvent::Resubscribed);
                }
                Err(e) => {
                    if !self.settings.retry
                        || self.settings.max_retries.is_some_and(|m| attempt >= m)
                    {
                        return Err(BrokerError::GaveUp(format!(
                            "gave up on pub/sub {} after {attempt} attempt(s): {e}",
                            self.label
                        )));
                    }
                    let delay = self.settings.backoff.delay(attempt);
                    tracing::warn!(
                        "pub/sub {}: {e}; retrying in {:.1} s",
                        self.label,
                        delay.as_secs_f64()
                    );
                    match &self.sentinel {
                        Some(target) => target.backoff(delay).await,
                        None => tokio::time::sleep(delay).await,
                    }
                }
            }
        }
    }
}
