//! [`Control`]: the caller's side of the mailbox, as Celery's
//! `app.control` speaks it, so Rust programs (and `greenpool inspect` /
//! `greenpool control`) steer any Celery worker, Python or greenpool.

use std::time::Duration;

#[cfg(feature = "redis")]
use std::sync::Arc;

use serde_json::{json, Map, Value};

#[cfg(feature = "redis")]
use super::envelope;
#[cfg(feature = "redis")]
use super::mailbox::EXCHANGE;
use super::wire::NodeWire;
#[cfg(feature = "redis")]
use crate::conn::Link;
use crate::conn::LinkSettings;
use crate::error::BrokerError;
#[cfg(feature = "redis")]
use crate::protocol::Envelope;
use crate::protocol::Timestamp;

/// The reply exchange of Celery's mailbox.
const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Who a request is for and how long to wait for answers.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::ControlOptions;
/// let opts = ControlOptions::default()
///     .destination(["w1@host"])
///     .timeout(Duration::from_millis(500));
/// assert_eq!(opts.limit, Some(1));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ControlOptions {
    /// Node names; `None` asks every node.
    pub destination: Option<Vec<String>>,
    /// How long to collect replies (Celery's default: 1 s).
    pub timeout: Duration,
    /// Stop after this many replies (set to the number of destinations
    /// by [`ControlOptions::destination`]).
    pub limit: Option<usize>,
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions {
            destination: None,
            timeout: Duration::from_secs(1),
            limit: None,
        }
    }
}

impl ControlOptions {
    /// Asks only these nodes, and stops waiting once each has answered.
    pub fn destination<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        self.limit = Some(nodes.len());
        self.destination = Some(nodes);
        self
    }

    /// Sets how long to collect replies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stops after `n` replies.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
}

/// The answers to one request: `(node name, answer)` in arrival order.
pub type Replies = Vec<(String, Value)>;

/// A client of Celery's remote control, over Redis or AMQP (chosen by the
/// URL, as for the worker).
///
/// ```no_run
/// use greenpool_celery::{Control, ControlOptions};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let control = Control::connect("redis://127.0.0.1:6379/0").await?;
/// for (node, answer) in control.call("ping", Default::default(), ControlOptions::default()).await? {
///     println!("{node}: {answer}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Control {
    wire: NodeWire,
    /// The routing key Redis replies come back under (on AMQP each call
    /// has a reply queue of its own).
    #[cfg(feature = "redis")]
    oid: String,
}

impl Control {
    /// Connects to the broker at `url`.
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when the URL is invalid or Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, &crate::config::TransportOptions::default()).await
    }

    /// Connects to the broker at `url` with its transport options (the
    /// workers' `broker_transport_options`: a `global_keyprefix` changes
    /// the mailbox channel and the reply lists, as with kombu).
    ///
    /// ```no_run
    /// use greenpool_celery::{Control, ControlOptions, TransportOptions};
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = TransportOptions::parse(r#"{"global_keyprefix": "gp:"}"#, "broker")?;
    /// let control = Control::connect_with("redis://127.0.0.1:6379/0", &options).await?;
    /// for (node, answer) in control.call("ping", Default::default(), ControlOptions::default()).await? {
    ///     println!("{node}: {answer}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when the URL is invalid or Redis cannot be reached;
    /// [`BrokerError::Config`] for Redis transport options on an AMQP
    /// broker, where they cannot apply.
    pub async fn connect_with(
        url: &str,
        options: &crate::config::TransportOptions,
    ) -> Result<Self, BrokerError> {
        let wire = match crate::broker::Transport::of(url)? {
            #[cfg(feature = "redis")]
            crate::broker::Transport::Redis => {
                let settings = LinkSettings::client().with_transport(options);
                let link = Link::open("remote control", url, settings, None).await?;
                let db = link.client().get_connection_info().redis_settings().db();
                NodeWire::Redis {
                    link: Arc::new(link),
                    db,
                }
            }
            #[cfg(feature = "amqp")]
            crate::broker::Transport::Amqp => {
                if *options != crate::config::TransportOptions::default() {
                    return Err(BrokerError::Config(
                        crate::error::ConfigError::TransportOptions {
                            which: "broker",
                            reason: "the broker is AMQP: Redis transport options do not apply"
                                .to_owned(),
                        },
                    ));
                }
                NodeWire::Amqp(
                    crate::broker::amqp::node_link::AmqpNodeLink::open(url, LinkSettings::client())
                        .await?,
                )
            }
        };
        Ok(Control {
            wire,
            #[cfg(feature = "redis")]
            oid: crate::uuid::uuid4(),
        })
    }

    /// Sends `method` with `arguments` and collects the answers until the
    /// timeout or the limit, as `app.control.broadcast(..., reply=True)`.
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when the broker fails. Malformed replies are
    /// logged and skipped.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: on Redis, a dropped call leaves its reply binding
    /// behind (kombu's sweeper removes stale ones); on AMQP the reply
    /// queue goes with its channel.
    pub async fn call(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        options: ControlOptions,
    ) -> Result<Replies, BrokerError> {
        let ticket = crate::uuid::uuid4();
        match &self.wire {
            #[cfg(feature = "redis")]
            NodeWire::Redis { link, db } => {
                call_redis(link, *db, &self.oid, method, arguments, &options, &ticket).await
            }
            #[cfg(feature = "amqp")]
            NodeWire::Amqp(link) => call_amqp(link, method, arguments, &options, &ticket).await,
        }
    }

    /// Sends `method` without waiting for answers (`reply=False`).
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when the publish fails.
    pub async fn cast(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        destination: Option<Vec<String>>,
    ) -> Result<(), BrokerError> {
        let body = request(method, arguments, destination.as_ref(), None);
        let timeout = Duration::from_secs(1);
        match &self.wire {
            #[cfg(feature = "redis")]
            NodeWire::Redis { link, db } => publish_redis(link, *db, &body, timeout).await,
            #[cfg(feature = "amqp")]
            NodeWire::Amqp(link) => link.publish(&[amqp_request(&body, timeout)]).await,
        }
    }
}

/// A request body as kombu's `Mailbox._publish` writes it; `reply` is the
/// ticket and the caller's oid when answers are wanted.
fn request(
    method: &str,
    arguments: Map<String, Value>,
    destination: Option<&Vec<String>>,
    reply: Option<(&str, &str)>,
) -> Value {
    let mut body = json!({
        "method": method, "arguments": arguments, "destination": destination,
        "pattern": null, "matcher": null,
    });
    if let (Some((ticket, oid)), Value::Object(m)) = (reply, &mut body) {
        m.insert("ticket".into(), json!(ticket));
        m.insert(
            "reply_to".into(),
            json!({"exchange": REPLY_EXCHANGE, "routing_key": oid}),
        );
    }
    body
}

/// The headers of a request: the clock and when it expires.
fn request_headers(timeout: Duration) -> Map<String, Value> {
    let mut headers = Map::new();
    headers.insert("clock".into(), json!(0));
    headers.insert(
        "expires".into(),
        json!((Timestamp::now() + timeout).unix_seconds()),
    );
    headers
}

/// Runs the command `make` builds, through the reconnecting link.
#[cfg(feature = "redis")]
async fn run<T: redis::FromRedisValue>(
    link: &Link,
    make: impl Fn() -> redis::Cmd,
) -> Result<T, BrokerError> {
    link.call_until_done("remote control", |mut conn| {
        let cmd = make();
        async move { cmd.query_async(&mut conn).await }
    })
    .await?
    .map_err(BrokerError::Redis)
}

/// PUBLISHes a request on the mailbox's fanout topic.
#[cfg(feature = "redis")]
async fn publish_redis(
    link: &Link,
    db: i64,
    body: &Value,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let payload = envelope::encode(body, request_headers(timeout), EXCHANGE, "", 2);
    let topic = link.settings().keys.fanout_topic(db, EXCHANGE, "");
    let _: i64 = run(link, || {
        let mut c = redis::cmd("PUBLISH");
        c.arg(&topic).arg(&payload);
        c
    })
    .await?;
    Ok(())
}

/// A call on Redis: bind the caller's reply list, publish, BRPOP the
/// answers, unbind.
#[cfg(feature = "redis")]
async fn call_redis(
    link: &Link,
    db: i64,
    oid: &str,
    method: &str,
    arguments: Map<String, Value>,
    options: &ControlOptions,
    ticket: &str,
) -> Result<Replies, BrokerError> {
    let keys = &link.settings().keys;
    let queue = format!("{oid}.{REPLY_EXCHANGE}");
    let member = keys.binding_member(oid, &queue);
    let binding = keys.binding_key(REPLY_EXCHANGE);
    // Replies have priority 0: the list of the step 0 falls in.
    let queue = keys.queue_key(&queue, 0);
    let _: i64 = run(link, || {
        let mut c = redis::cmd("SADD");
        c.arg(&binding).arg(&member);
        c
    })
    .await?;
    let body = request(
        method,
        arguments,
        options.destination.as_ref(),
        Some((ticket, oid)),
    );
    let result = match publish_redis(link, db, &body, options.timeout).await {
        Ok(()) => collect_redis(link, &queue, ticket, options).await,
        Err(e) => Err(e),
    };
    let cleanup = link
        .call_until_done("remote control", |mut conn| {
            let mut pipe = redis::pipe();
            pipe.cmd("SREM").arg(&binding).arg(&member).ignore();
            pipe.cmd("DEL").arg(&queue).ignore();
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await?
        .map_err(BrokerError::Redis);
    let replies = result?;
    cleanup?;
    Ok(replies)
}

/// BRPOPs the answers carrying `ticket` from `queue`.
#[cfg(feature = "redis")]
async fn collect_redis(
    link: &Link,
    queue: &str,
    ticket: &str,
    options: &ControlOptions,
) -> Result<Replies, BrokerError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut replies = Replies::new();
    while options.limit.is_none_or(|l| replies.len() < l) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        // At most a second per BRPOP (as kombu polls), well inside the
        // link's command timeout; never 0, which would block for ever.
        let secs = left.as_secs_f64().clamp(0.001, 1.0);
        let popped: Option<(String, String)> = run(link, || {
            let mut c = redis::cmd("BRPOP");
            c.arg(queue).arg(secs);
            c
        })
        .await?;
        let Some((_, raw)) = popped else { continue };
        match decode_reply(&raw, ticket) {
            Some(answers) => replies.extend(answers),
            None => tracing::debug!("control: dropped a reply of another request"),
        }
    }
    Ok(replies)
}

/// A request as published on AMQP: JSON to the `celery.pidbox` fanout.
#[cfg(feature = "amqp")]
fn amqp_request(body: &Value, timeout: Duration) -> crate::broker::amqp::node_link::Outgoing {
    crate::broker::amqp::node_link::Outgoing {
        exchange: crate::broker::amqp::node_link::PIDBOX,
        routing_key: String::new(),
        body: body.to_string().into_bytes(),
        headers: request_headers(timeout),
        delivery_mode: 1,
    }
}

/// A call on AMQP: a reply queue of its own (so concurrent calls never
/// take each other's answers), publish, consume the answers until the
/// timeout or the limit, close the queue's channel (the queue goes).
#[cfg(feature = "amqp")]
async fn call_amqp(
    link: &crate::broker::amqp::node_link::AmqpNodeLink,
    method: &str,
    arguments: Map<String, Value>,
    options: &ControlOptions,
    ticket: &str,
) -> Result<Replies, BrokerError> {
    use futures::StreamExt;

    let oid = crate::uuid::uuid4();
    let (channel, mut consumer) = link.reply_queue(&oid).await?;
    let body = request(
        method,
        arguments,
        options.destination.as_ref(),
        Some((ticket, &oid)),
    );
    let collected = async {
        link.publish(&[amqp_request(&body, options.timeout)])
            .await?;
        let deadline = tokio::time::Instant::now() + options.timeout;
        let mut replies = Replies::new();
        while options.limit.is_none_or(|l| replies.len() < l) {
            let Ok(next) = tokio::time::timeout_at(deadline, consumer.next()).await else {
                break;
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(BrokerError::Amqp(e)),
                None => break,
            };
            let theirs = crate::broker::amqp::node_link::header(&d, "ticket");
            if theirs.as_str() != Some(ticket) {
                tracing::debug!("control: dropped a reply of another request");
                continue;
            }
            match serde_json::from_slice::<Value>(&d.data) {
                Ok(Value::Object(m)) => replies.extend(m),
                _ => tracing::debug!("control: dropped a reply that is not an object"),
            }
        }
        Ok(replies)
    }
    .await;
    let _ = channel.close(200, "replies collected".into()).await;
    collected
}

/// The answers in a reply envelope carrying `ticket`; `None` for replies
/// to other requests or unreadable ones.
#[cfg(feature = "redis")]
fn decode_reply(raw: &str, ticket: &str) -> Option<Replies> {
    let env: Envelope = serde_json::from_str(raw).ok()?;
    if env.headers.get("ticket").and_then(Value::as_str) != Some(ticket) {
        return None;
    }
    let body = match env.properties.body_encoding.as_deref() {
        Some("base64") => crate::protocol::base64::decode(env.body.as_bytes()).ok()?,
        _ => env.body.into_bytes(),
    };
    match serde_json::from_slice::<Value>(&body).ok()? {
        Value::Object(m) => Some(m.into_iter().collect()),
        _ => None,
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_replies_with_the_ticket() {
        let mut h = Map::new();
        h.insert("ticket".into(), json!("t1"));
        let raw = envelope::encode(&json!({"w@h": {"ok": "pong"}}), h, REPLY_EXCHANGE, "oid", 1);
        assert_eq!(
            decode_reply(&raw, "t1"),
            Some(vec![("w@h".to_owned(), json!({"ok": "pong"}))])
        );
        assert_eq!(decode_reply(&raw, "t2"), None);
        assert_eq!(decode_reply("nonsense", "t1"), None);
    }
}
