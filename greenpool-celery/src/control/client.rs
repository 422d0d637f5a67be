//! [`Control`]: the caller's side of the mailbox, as Celery's
//! `app.control` speaks it, so Rust programs (and `greenpool inspect` /
//! `greenpool control`) steer any Celery worker, Python or greenpool.

use std::time::Duration;

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::envelope;
use super::mailbox::EXCHANGE;
use super::reply::binding_key;
use crate::broker::keys::SEP;
use crate::conn::{Link, LinkSettings};
use crate::error::BrokerError;
use crate::protocol::{Envelope, Timestamp};

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

/// A client of Celery's remote control over Redis.
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
    link: Arc<Link>,
    db: i64,
    oid: String,
}

impl Control {
    /// Connects to the broker at `url`.
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when the URL is invalid or Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let link = Link::open("remote control", url, LinkSettings::client(), None).await?;
        let db = link.client().get_connection_info().redis_settings().db();
        Ok(Control {
            link: Arc::new(link),
            db,
            oid: crate::uuid::uuid4(),
        })
    }

    /// Sends `method` with `arguments` and collects the answers until the
    /// timeout or the limit, as `app.control.broadcast(..., reply=True)`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Redis`] when Redis fails. Malformed replies are
    /// logged and skipped.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped call leaves its reply binding behind
    /// (kombu's sweeper removes stale ones).
    pub async fn call(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        options: ControlOptions,
    ) -> Result<Replies, BrokerError> {
        let queue = format!("{}.{REPLY_EXCHANGE}", self.oid);
        let member = format!("{}{SEP}{SEP}{queue}", self.oid);
        let binding = binding_key(REPLY_EXCHANGE);
        let _: i64 = self
            .run(|| {
                let mut c = redis::cmd("SADD");
                c.arg(&binding).arg(&member);
                c
            })
            .await?;
        let ticket = crate::uuid::uuid4();
        let result = self
            .publish_and_collect(method, arguments, &options, &ticket, &queue)
            .await;
        let cleanup = self
            .run_pipe(|| {
                let mut pipe = redis::pipe();
                pipe.cmd("SREM").arg(&binding).arg(&member).ignore();
                pipe.cmd("DEL").arg(&queue).ignore();
                pipe
            })
            .await;
        let replies = result?;
        cleanup?;
        Ok(replies)
    }

    /// Runs the command `make` builds, through the reconnecting link.
    async fn run<T: redis::FromRedisValue>(
        &self,
        make: impl Fn() -> redis::Cmd,
    ) -> Result<T, BrokerError> {
        self.link
            .call_until_done("remote control", |mut conn| {
                let cmd = make();
                async move { cmd.query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)
    }

    /// Runs the pipeline `make` builds, through the reconnecting link.
    async fn run_pipe(&self, make: impl Fn() -> redis::Pipeline) -> Result<(), BrokerError> {
        self.link
            .call_until_done("remote control", |mut conn| {
                let pipe = make();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)
    }

    /// Sends `method` without waiting for answers (`reply=False`).
    ///
    /// # Errors
    ///
    /// [`BrokerError::Redis`] when the PUBLISH fails.
    pub async fn cast(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        destination: Option<Vec<String>>,
    ) -> Result<(), BrokerError> {
        let body = json!({
            "method": method, "arguments": arguments, "destination": destination,
            "pattern": null, "matcher": null,
        });
        self.publish(&body, Duration::from_secs(1)).await
    }

    async fn publish(&self, body: &Value, timeout: Duration) -> Result<(), BrokerError> {
        let mut headers = Map::new();
        headers.insert("clock".into(), json!(0));
        headers.insert(
            "expires".into(),
            json!((Timestamp::now() + timeout).unix_seconds()),
        );
        let payload = envelope::encode(body, headers, EXCHANGE, "", 2);
        let topic = envelope::fanout_topic(self.db, EXCHANGE, "");
        let _: i64 = self
            .run(|| {
                let mut c = redis::cmd("PUBLISH");
                c.arg(&topic).arg(&payload);
                c
            })
            .await?;
        Ok(())
    }

    async fn publish_and_collect(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        options: &ControlOptions,
        ticket: &str,
        queue: &str,
    ) -> Result<Replies, BrokerError> {
        let body = json!({
            "method": method, "arguments": arguments, "destination": options.destination,
            "pattern": null, "matcher": null, "ticket": ticket,
            "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": self.oid},
        });
        self.publish(&body, options.timeout).await?;
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
            let popped: Option<(String, String)> = self
                .run(|| {
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
}

/// The answers in a reply envelope carrying `ticket`; `None` for replies
/// to other requests or unreadable ones.
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

#[cfg(test)]
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
