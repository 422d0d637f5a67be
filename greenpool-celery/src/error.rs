//! Every public error of the crate.

/// A queue entry that is not a task message this worker can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The envelope is not the JSON object kombu pushes.
    #[error("envelope is not kombu's JSON object: {0}; was it produced by a kombu Redis client?")]
    Envelope(#[source] serde_json::Error),
    /// The headers have a value of the wrong type.
    #[error("task headers are malformed: {0}")]
    Headers(#[source] serde_json::Error),
    /// The body does not decode to `[args, kwargs, embed]` (v2) or a task dict (v1).
    #[error("task body is malformed: {0}; send JSON `[args, kwargs, embed]`")]
    Body(#[source] serde_json::Error),
    /// The base64 body does not decode.
    #[error("body is not valid base64 at byte {position}: {reason}")]
    Base64 {
        /// Byte offset of the problem.
        position: usize,
        /// What is wrong there.
        reason: &'static str,
    },
    /// `properties.body_encoding` names an encoding other than base64.
    #[error("body encoding {0:?} is not supported; use base64")]
    BodyEncoding(String),
    /// The body was serialised with something other than JSON.
    #[error(
        "content type {0:?} is not supported; configure the client with task_serializer='json'"
    )]
    ContentType(String),
    /// A required header (`task` or `id`) is missing or empty.
    #[error("required header {0:?} is missing")]
    MissingHeader(&'static str),
    /// `eta`, `expires` or another time is not ISO-8601.
    #[error("{0:?} is not an ISO-8601 timestamp")]
    Timestamp(String),
    /// `content-encoding` names a character set this worker does not read.
    #[error("content-encoding {0:?} is not supported; send utf-8 (kombu's default) or utf-16")]
    ContentEncoding(String),
    /// The body is not valid text in its `content-encoding`.
    #[error("body is not valid {encoding} text: {reason}; send the JSON body as utf-8")]
    NotText {
        /// The character set the body claimed.
        encoding: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The message holds `NaN`, `Infinity` or `-Infinity`, which Python's
    /// json writes for non-finite floats but which no task here can
    /// receive.
    #[error(
        "the message holds NaN or Infinity (Python's json writes them for non-finite floats); \
         send finite numbers or None"
    )]
    NonFinite,
    /// The message has no body, or its body is not a string.
    #[error("the envelope has no body string; was it produced by a kombu Redis client?")]
    MissingBody,
    /// A value could not be serialised while encoding.
    #[error("cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A failure to reach or use the broker (Redis or AMQP) or the result backend.
///
/// The variants that carry a Redis or AMQP error exist only with the
/// cargo feature of that broker (`redis`, `amqp`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The URL does not parse.
    #[cfg(feature = "redis")]
    #[error("invalid Redis URL: {0}; use redis://host:port/db")]
    Url(#[source] redis::RedisError),
    /// The server could not be reached.
    #[cfg(feature = "redis")]
    #[error("cannot connect to Redis: {0}; is the server running?")]
    Connect(#[source] redis::RedisError),
    /// A Redis URL's TLS options cannot be used: an unknown query key on
    /// a `rediss://` URL, a bad `ssl_cert_reqs`, a certificate or key
    /// file that cannot be read, or TLS options where TLS is not spoken
    /// (`redis://`, `sentinel://`). `url` has no password.
    #[cfg(feature = "redis")]
    #[non_exhaustive]
    #[error("cannot use the TLS options of {url}: {problem}")]
    Tls {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The server answered but refused this client at its first
    /// connection: a wrong user name or password (Redis ACL users), or a
    /// TLS handshake that failed (a certificate not signed by the CA the
    /// URL names, a host name the certificate does not cover, TLS against
    /// a plain port). Retrying would not help, so it is not retried.
    #[cfg(feature = "redis")]
    #[non_exhaustive]
    #[error("{url} refused the connection: {source}; {hint}")]
    Refused {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What to check.
        hint: &'static str,
        /// The redis crate's error.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis command failed.
    #[cfg(feature = "redis")]
    #[error("Redis command failed: {0}")]
    Redis(#[source] redis::RedisError),
    /// The connection was lost and reconnecting failed as often as
    /// `broker_connection_max_retries` allows (or retrying is off).
    #[error("{0}; check the server, or raise broker_connection_max_retries (0: retry forever)")]
    GaveUp(String),
    /// An AMQP operation failed.
    #[cfg(feature = "amqp")]
    #[error("AMQP broker: {0}")]
    Amqp(#[source] lapin::Error),
    /// A queue or exchange exists with other settings than the ones the
    /// worker declares (AMQP 406 PRECONDITION_FAILED).
    #[error(
        "the broker refused to declare {what}: {reason}; it exists with other arguments \
         (x-max-priority, x-queue-type, durability): delete it or make the worker's settings \
         match it"
    )]
    Precondition {
        /// The queue or exchange.
        what: String,
        /// The server's text.
        reason: String,
    },
    /// The URL's scheme names no broker this build supports.
    #[error(
        "unsupported broker URL {0:?}: use redis://, rediss://, amqp://, amqps:// or pyamqp://"
    )]
    Scheme(String),
    /// The URL names a broker or result backend that this build leaves
    /// out: greenpool-celery was compiled without the cargo feature that
    /// brings it (`redis` for `redis://`, `rediss://` and `unix://`,
    /// `amqp` for `amqp://`, `amqps://` and `pyamqp://`).
    #[error(
        "{scheme}:// URLs need the {feature:?} cargo feature, which this build of greenpool \
         leaves out: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// The URL's scheme, without `://`.
        scheme: String,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// Settings that cannot be used with this broker (e.g. Redis
    /// transport options on an AMQP broker).
    #[error(transparent)]
    Config(crate::error::ConfigError),
    /// A canvas the client cannot send (a chord without a Redis result
    /// backend, a form greenpool does not apply, options that cannot be
    /// used): nothing of it was sent.
    #[error("cannot send the canvas: {0}")]
    Canvas(String),
    /// The client has no result backend to read results from (builds
    /// with the `redis` feature report this as a `Redis` client error, as
    /// they always have).
    #[error("no result backend configured; connect the client with a result backend URL")]
    NoBackend,
    /// The Redis server is older than this worker needs.
    #[cfg(feature = "redis")]
    #[error("Redis {found} is too old: greenpool needs Redis {needed} or newer")]
    Version {
        /// The server's version.
        found: String,
        /// The oldest version supported.
        needed: &'static str,
    },
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Transport options (`broker_transport_options`,
    /// `result_backend_transport_options`) that cannot be used.
    #[error("{which} transport options: {reason}")]
    TransportOptions {
        /// `"broker"` or `"result backend"`.
        which: &'static str,
        /// What is wrong, and what is supported.
        reason: String,
    },
    /// An environment variable holds a value of the wrong form.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// Concurrency or prefetch multiplier is zero, or no queue is named.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Why a worker could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The broker or backend failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pool could not be built or started.
    #[error("cannot start the task pool: {0}")]
    Pool(String),
    /// The metrics address could not be bound.
    #[error(
        "cannot serve metrics on {addr}: {source}; pass a free address to --metrics \
         (port 0 picks one)"
    )]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// Why waiting for a task result did not give a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The task failed; Python would raise this exception.
    #[error("task failed: {0}")]
    Failed(crate::TaskError),
    /// The task was revoked (or expired) before it ran.
    #[error("task was revoked: {0}")]
    Revoked(crate::TaskError),
    /// No result arrived in time; the task may still run.
    #[error("no result within {0:?}; wait longer or check that a worker consumes the queue")]
    Timeout(std::time::Duration),
    /// Redis failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The stored meta is not Celery's JSON.
    #[error("stored result is malformed: {0}")]
    Malformed(#[source] serde_json::Error),
}
