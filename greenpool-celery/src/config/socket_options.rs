//! [`SocketOptions`]: the broker transport options that say how a Redis
//! connection is opened and watched (`socket_timeout`,
//! `socket_connect_timeout`, `health_check_interval`).

use std::time::Duration;

/// How a Redis connection is opened and watched; `None` keeps
/// greenpool's default. Read from `broker_transport_options` for the
/// broker's connections; the result backend's can be set from Rust
/// ([`RedisOptions::backend_socket`](crate::RedisOptions::backend_socket)),
/// since Celery reads them from settings of their own (`redis_socket_timeout`,
/// ...) rather than from `result_backend_transport_options`.
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::TransportOptions;
/// let t = TransportOptions::parse(
///     r#"{"socket_timeout": 5, "socket_connect_timeout": 2, "health_check_interval": 30}"#,
///     "broker",
/// ).unwrap();
/// assert_eq!(t.socket.socket_timeout, Some(Duration::from_secs(5)));
/// assert_eq!(t.socket.socket_connect_timeout, Some(Duration::from_secs(2)));
/// assert_eq!(t.socket.health_check_interval, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `socket_timeout`: how long a command may go unanswered before its
    /// connection counts as lost (the link's command timeout, 10 s by
    /// default). redis-py's `None`, no timeout, keeps that default: a
    /// link always has one, so that a stalled peer is noticed.
    pub socket_timeout: Option<Duration>,
    /// `socket_connect_timeout`: how long opening a connection may take
    /// (otherwise `broker_connection_timeout`, 4 s).
    pub socket_connect_timeout: Option<Duration>,
    /// `health_check_interval`: redis-py pings a connection idle that
    /// long before it uses it. greenpool's connections are multiplexed
    /// and never idle-then-reused that way; they detect a dead peer with
    /// TCP keepalive (and the command timeout) instead, and this sets the
    /// idle time before keepalive's first probe (60 s otherwise). `0`
    /// (redis-py: no checks) keeps that default.
    pub health_check_interval: Option<Duration>,
}
