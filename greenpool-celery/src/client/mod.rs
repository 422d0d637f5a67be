//! The client side: send tasks that any Celery worker (Python or
//! greenpool) accepts, and wait for their results as `AsyncResult` does.

use std::time::Duration;

use std::sync::Arc;

use serde_json::{Map, Value};

#[cfg(feature = "redis")]
use crate::backend::result_key;
use crate::backend::{ResultMeta, TaskState};
use crate::conn::{Backoff, LinkSettings};
#[cfg(feature = "redis")]
use crate::conn::{Link, Subscriber, SubscriberEvent};
use crate::error::{BrokerError, ResultError};
use crate::protocol::{TaskMessage, TimeLimit, Timestamp};
use crate::task_error::TaskError;

mod canvas;
mod options;

pub use canvas::{CanvasResult, GroupResult};
pub use options::ClientOptions;

/// Options of one call, as `apply_async` takes them.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::SendOptions;
/// let opts = SendOptions::default().queue("io").countdown(Duration::from_secs(5)).priority(3);
/// assert_eq!(opts.queue, "io");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Queue to send to (routing key on the default exchange).
    pub queue: String,
    /// Run no earlier than this.
    pub eta: Option<Timestamp>,
    /// Revoke if not started by then.
    pub expires: Option<Timestamp>,
    /// 0–9; on Redis a lower number is served first.
    pub priority: Option<u8>,
    /// Use this id instead of a new one.
    pub task_id: Option<String>,
    /// Ask the worker not to store a result.
    pub ignore_result: bool,
    /// Hard and soft time limits.
    pub timelimit: TimeLimit,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            queue: "celery".to_owned(),
            eta: None,
            expires: None,
            priority: None,
            task_id: None,
            ignore_result: false,
            timelimit: TimeLimit::default(),
        }
    }
}

impl SendOptions {
    /// Sets the queue.
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = q.into();
        self
    }
    /// Runs the task `d` from now (sets the ETA, as Celery's client does).
    pub fn countdown(mut self, d: Duration) -> Self {
        self.eta = Some(Timestamp::now() + d);
        self
    }
    /// Sets the ETA.
    pub fn eta(mut self, t: Timestamp) -> Self {
        self.eta = Some(t);
        self
    }
    /// Sets the expiry time.
    pub fn expires(mut self, t: Timestamp) -> Self {
        self.expires = Some(t);
        self
    }
    /// Sets the priority (0–9).
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = Some(p.min(9));
        self
    }
    /// Sets the task id.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }
    /// Asks for no result.
    pub fn ignore_result(mut self, ignore: bool) -> Self {
        self.ignore_result = ignore;
        self
    }
    /// Sets `[hard, soft]` time limits in seconds.
    pub fn time_limits(mut self, hard: Option<f64>, soft: Option<f64>) -> Self {
        self.timelimit = TimeLimit { hard, soft };
        self
    }
}

/// A Celery client on Redis or AMQP (chosen by the broker URL's scheme).
///
/// With an `amqp://` broker, results come from a Redis backend or, with
/// `rpc://` (or the broker's own URL) as result backend, from the
/// client's own reply queue as Celery's rpc backend sends them.
///
/// Its connections reconnect by themselves (Celery's publish retry
/// policy: 3 retries, 0.2 s apart), and result waits subscribe again after
/// a loss. A send whose reply is lost is sent again, so a task may be
/// queued twice when the connection breaks at that moment (at least once,
/// as with kombu).
#[derive(Debug, Clone)]
pub struct Client {
    broker: ClientBroker,
    /// The Redis result backend.
    #[cfg(feature = "redis")]
    backend: Option<Arc<Link>>,
}

#[derive(Debug, Clone)]
enum ClientBroker {
    #[cfg(feature = "redis")]
    Redis(Arc<Link>),
    #[cfg(feature = "amqp")]
    Amqp(Arc<crate::broker::amqp::client::AmqpClient>),
}

fn client_settings() -> LinkSettings {
    let mut s = LinkSettings::client();
    s.max_retries = Some(3);
    s.retry_on_startup = false;
    s.backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_millis(200),
    };
    s
}

impl Client {
    /// Connects to the broker and, if given, the result backend.
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when a URL is invalid or a server cannot be reached.
    pub async fn connect(
        broker_url: &str,
        result_backend: Option<&str>,
    ) -> Result<Self, BrokerError> {
        Self::connect_with(broker_url, result_backend, ClientOptions::default()).await
    }

    /// Connects as [`Client::connect`] does, with the deployment's
    /// transport options (a `global_keyprefix`, other priority steps, a
    /// `sentinel://` master name...).
    ///
    /// ```no_run
    /// use greenpool_celery::{Client, ClientOptions, SendOptions, TransportOptions};
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = TransportOptions::parse(r#"{"global_keyprefix": "gp:"}"#, "broker")?;
    /// let client = Client::connect_with(
    ///     "redis://127.0.0.1:6379/0",
    ///     None,
    ///     ClientOptions::default().broker_transport_options(broker),
    /// )
    /// .await?;
    /// // LPUSHed on `gp:celery`.
    /// client.send_task("greenpool.add", vec![2.into(), 3.into()], Default::default(), SendOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`BrokerError`] when a URL is invalid or a server cannot be
    /// reached; [`BrokerError::Config`] for Redis transport options on an
    /// AMQP broker, where they cannot apply.
    pub async fn connect_with(
        broker_url: &str,
        result_backend: Option<&str>,
        options: ClientOptions,
    ) -> Result<Self, BrokerError> {
        match crate::broker::Transport::of(broker_url)? {
            #[cfg(feature = "amqp")]
            crate::broker::Transport::Amqp => {
                if options.broker != crate::config::TransportOptions::default() {
                    return Err(BrokerError::Config(
                        crate::error::ConfigError::TransportOptions {
                            which: "broker",
                            reason: "the broker is AMQP: Redis transport options do not apply"
                                .to_owned(),
                        },
                    ));
                }
                Self::connect_amqp(broker_url, result_backend, &options).await
            }
            #[cfg(feature = "redis")]
            crate::broker::Transport::Redis => {
                Self::connect_redis(broker_url, result_backend, &options).await
            }
        }
    }

    /// Connects to an AMQP broker; results come by rpc:// or from a Redis
    /// backend.
    #[cfg(feature = "amqp")]
    async fn connect_amqp(
        broker_url: &str,
        result_backend: Option<&str>,
        options: &ClientOptions,
    ) -> Result<Self, BrokerError> {
        let rpc = result_backend.is_some_and(|u| {
            u.starts_with("rpc://")
                || crate::broker::Transport::of(u)
                    .is_ok_and(|t| t == crate::broker::Transport::Amqp)
        });
        #[cfg(not(feature = "redis"))]
        if let Some(url) = result_backend.filter(|_| !rpc) {
            return Err(crate::broker::backend_left_out(url));
        }
        let amqp =
            crate::broker::amqp::client::AmqpClient::connect(broker_url, client_settings(), rpc)
                .await?;
        #[cfg(feature = "redis")]
        let backend = match result_backend {
            Some(url) if !rpc => {
                let settings = client_settings().with_transport(&options.result_backend);
                Some(Arc::new(
                    Link::open("result backend", url, settings, None).await?,
                ))
            }
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        let _ = options;
        Ok(Client {
            broker: ClientBroker::Amqp(Arc::new(amqp)),
            #[cfg(feature = "redis")]
            backend,
        })
    }

    /// Connects to a Redis broker and, if given, a Redis result backend.
    #[cfg(feature = "redis")]
    async fn connect_redis(
        broker_url: &str,
        result_backend: Option<&str>,
        options: &ClientOptions,
    ) -> Result<Self, BrokerError> {
        let settings = client_settings().with_transport(&options.broker);
        let broker = Arc::new(Link::open("broker", broker_url, settings, None).await?);
        // The broker's server holds the results too unless the backend
        // was given options of its own that differ (as the worker does).
        let same = options.result_backend == crate::config::TransportOptions::default()
            || (options.result_backend.sentinel == options.broker.sentinel
                && options.result_backend.socket == options.broker.socket);
        let backend = match result_backend {
            Some(url) if url == broker_url && same => Some(Arc::clone(&broker)),
            Some(url) => {
                let settings = client_settings().with_transport(&options.result_backend);
                Some(Arc::new(
                    Link::open("result backend", url, settings, None).await?,
                ))
            }
            None => None,
        };
        Ok(Client {
            broker: ClientBroker::Redis(broker),
            backend,
        })
    }

    /// Sends a task, as `app.send_task(name, args, kwargs, **options)`
    /// does: a protocol v2 message LPUSHed on the queue's list for its
    /// priority.
    ///
    /// # Errors
    ///
    /// [`BrokerError`] if the push (Redis) or the publish (AMQP) fails.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<AsyncResult, BrokerError> {
        let mut msg = TaskMessage::new(name, args, kwargs);
        if let Some(id) = options.task_id {
            msg.headers.root_id = Some(id.clone());
            msg.properties.correlation_id = Some(id.clone());
            msg.headers.id = id;
        }
        msg.headers.eta = options.eta;
        msg.headers.expires = options.expires;
        msg.headers.ignore_result = options.ignore_result;
        msg.headers.timelimit = options.timelimit;
        msg.headers.origin = Some(format!("gen{}@greenpool", std::process::id()));
        let priority = options.priority.unwrap_or(0);
        msg.properties.priority = Some(priority);
        msg.properties.delivery_info.routing_key = options.queue.clone();
        match &self.broker {
            #[cfg(feature = "redis")]
            ClientBroker::Redis(link) => send_redis(link, &msg, &options.queue, priority).await?,
            #[cfg(feature = "amqp")]
            ClientBroker::Amqp(amqp) => {
                msg.properties.reply_to = amqp.reply_to().map(str::to_owned);
                let out = msg
                    .to_envelope()
                    .and_then(|env| {
                        crate::broker::amqp::amqp_from_publish(&crate::broker::Publish::to_queue(
                            &options.queue,
                            Some(priority),
                            env,
                        ))
                    })
                    .map_err(|e| {
                        BrokerError::GaveUp(format!("cannot encode the task message: {e}"))
                    })?;
                amqp.publish(&options.queue, out).await?;
            }
        }
        Ok(self.result(&msg.headers.id))
    }

    /// A handle on the result of task `id`.
    pub fn result(&self, id: &str) -> AsyncResult {
        AsyncResult {
            id: id.to_owned(),
            #[cfg(feature = "redis")]
            backend: self.backend.clone(),
            #[cfg(feature = "amqp")]
            rpc: match &self.broker {
                ClientBroker::Amqp(a) if a.reply_to().is_some() => Some(a.watch(id)),
                _ => None,
            },
        }
    }
}

/// LPUSHes `msg` on the list of `queue` for `priority`.
#[cfg(feature = "redis")]
async fn send_redis(
    link: &Link,
    msg: &TaskMessage,
    queue: &str,
    priority: u8,
) -> Result<(), BrokerError> {
    let payload = msg.encode().map_err(|e| {
        BrokerError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "cannot encode the task message",
            e.to_string(),
        )))
    })?;
    let key = link.settings().keys.queue_key(queue, priority);
    lpush(link, &key, payload).await
}

/// LPUSHes `payload` on list `key` (a queue at one priority step).
#[cfg(feature = "redis")]
async fn lpush(link: &Link, key: &str, payload: String) -> Result<(), BrokerError> {
    let mut push = redis::cmd("LPUSH");
    push.arg(key).arg(payload);
    let _: i64 = link
        .call_until_done("sending a task", |mut conn| {
            let push = &push;
            async move { push.query_async(&mut conn).await }
        })
        .await?
        .map_err(BrokerError::Redis)?;
    Ok(())
}

/// The result of a sent task, read from the result backend.
#[derive(Debug, Clone)]
pub struct AsyncResult {
    id: String,
    /// The Redis result backend.
    #[cfg(feature = "redis")]
    backend: Option<Arc<Link>>,
    /// The rpc:// replies for this task.
    #[cfg(feature = "amqp")]
    rpc: Option<tokio::sync::watch::Receiver<Option<ResultMeta>>>,
}

#[cfg(feature = "redis")]
fn no_backend() -> ResultError {
    ResultError::Broker(BrokerError::Redis(redis::RedisError::from((
        redis::ErrorKind::Client,
        "no result backend configured; connect the client with a result backend URL",
    ))))
}

/// Without the `redis` feature only rpc:// results can be read.
#[cfg(not(feature = "redis"))]
fn no_backend() -> ResultError {
    ResultError::Broker(BrokerError::NoBackend)
}

impl AsyncResult {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The stored meta; `None` while nothing is stored (PENDING).
    ///
    /// # Errors
    ///
    /// [`ResultError::Broker`] if Redis fails or no backend is configured,
    /// [`ResultError::Malformed`] for a meta that is not Celery's JSON.
    pub async fn meta(&self) -> Result<Option<ResultMeta>, ResultError> {
        #[cfg(feature = "amqp")]
        if let Some(rx) = &self.rpc {
            return Ok(rx.borrow().clone());
        }
        self.redis_meta().await
    }

    /// The meta stored in the Redis backend.
    #[cfg(feature = "redis")]
    async fn redis_meta(&self) -> Result<Option<ResultMeta>, ResultError> {
        let link = self.backend.as_ref().ok_or_else(no_backend)?;
        let key = result_key(&self.id);
        let raw: Option<String> = link
            .call_until_done("reading a result", |mut conn| {
                let key = &key;
                async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
            })
            .await?
            .map_err(|e| ResultError::Broker(BrokerError::Redis(e)))?;
        raw.map(|r| serde_json::from_str(&r).map_err(ResultError::Malformed))
            .transpose()
    }

    /// Without the `redis` feature there is no stored meta to read.
    #[cfg(not(feature = "redis"))]
    async fn redis_meta(&self) -> Result<Option<ResultMeta>, ResultError> {
        Err(no_backend())
    }

    /// The current state (PENDING when nothing is stored).
    ///
    /// # Errors
    ///
    /// As for [`AsyncResult::meta`].
    pub async fn state(&self) -> Result<TaskState, ResultError> {
        Ok(self.meta().await?.map_or(TaskState::Pending, |m| m.status))
    }

    /// Waits up to `timeout` for the task to finish, as Celery's Redis
    /// backend does: subscribe to the result key, read it once, then wait
    /// for the worker's PUBLISH.
    ///
    /// # Errors
    ///
    /// [`ResultError::Failed`] with the task's exception,
    /// [`ResultError::Revoked`], [`ResultError::Timeout`], or a Redis
    /// error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get(&self, timeout: Duration) -> Result<Value, ResultError> {
        #[cfg(feature = "amqp")]
        if let Some(rx) = &self.rpc {
            let mut rx = rx.clone();
            let waited = tokio::time::timeout(
                timeout,
                rx.wait_for(|m| m.as_ref().is_some_and(|m| m.status.is_ready())),
            )
            .await
            .map_err(|_| ResultError::Timeout(timeout))?;
            let meta = waited.ok().and_then(|m| m.clone()).ok_or_else(|| {
                ResultError::Broker(BrokerError::GaveUp(
                    "the rpc reply consumer stopped".to_owned(),
                ))
            })?;
            return into_value(meta);
        }
        self.redis_get(timeout).await
    }

    /// [`AsyncResult::get`] on the Redis backend.
    #[cfg(feature = "redis")]
    async fn redis_get(&self, timeout: Duration) -> Result<Value, ResultError> {
        let link = self.backend.as_ref().ok_or_else(no_backend)?;
        let key = result_key(&self.id);
        let deadline = tokio::time::Instant::now() + timeout.min(crate::seconds::MAX_DURATION);
        // Subscribed on the first `next`, with the link's retry policy, so a
        // cut during the subscription is retried like any later loss; that
        // first `next` says `Resubscribed` and the key is read again then.
        let mut sub = Subscriber::lazy(link, vec![key], Vec::new());
        let mut check = true;
        loop {
            if check {
                check = false;
                let meta = tokio::time::timeout_at(deadline, self.redis_meta())
                    .await
                    .map_err(|_| ResultError::Timeout(timeout))??;
                if let Some(meta) = meta.filter(|m| m.status.is_ready()) {
                    return into_value(meta);
                }
            }
            let next = tokio::time::timeout_at(deadline, sub.next())
                .await
                .map_err(|_| ResultError::Timeout(timeout))??;
            match next {
                // Published while we were away: read the key again.
                SubscriberEvent::Resubscribed => check = true,
                SubscriberEvent::Message(msg) => {
                    let payload: String = msg
                        .get_payload()
                        .map_err(|e| ResultError::Broker(BrokerError::Redis(e)))?;
                    let meta: ResultMeta =
                        serde_json::from_str(&payload).map_err(ResultError::Malformed)?;
                    if meta.status.is_ready() {
                        return into_value(meta);
                    }
                }
            }
        }
    }

    /// Without the `redis` feature there is no stored result to wait for.
    #[cfg(not(feature = "redis"))]
    async fn redis_get(&self, _timeout: Duration) -> Result<Value, ResultError> {
        Err(no_backend())
    }
}

fn into_value(meta: ResultMeta) -> Result<Value, ResultError> {
    let exc = || {
        TaskError::from_json(&meta.result)
            .unwrap_or_else(|| TaskError::new("Exception", meta.result.to_string()))
    };
    match meta.status {
        TaskState::Success => Ok(meta.result),
        TaskState::Revoked => Err(ResultError::Revoked(exc())),
        _ => {
            let mut e = exc();
            if let Some(tb) = &meta.traceback {
                e = e.with_traceback(tb.clone());
            }
            Err(ResultError::Failed(e))
        }
    }
}
