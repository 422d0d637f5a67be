//! [`TransportOptions`]: Celery's `broker_transport_options` and
//! `result_backend_transport_options` as JSON, read key by key. Every key
//! kombu's Redis transport accepts is either honoured or refused with its
//! reason: none is silently ignored.

use std::time::Duration;

use serde_json::{Map, Number, Value};

use super::{RedisKeys, SentinelOptions, SocketOptions};
use crate::error::ConfigError;

/// How a worker consuming several queues picks the next one
/// (`queue_order_strategy`, kombu's names).
///
/// The take reads the queues' lists priority step first (every queue's
/// step-0 list, then every queue's next step, ...), as kombu's `BRPOP`
/// does; this order is the queues' order within each step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueOrder {
    /// `round_robin` (the default): the queues take turns being first,
    /// so that each has an equal chance.
    #[default]
    RoundRobin,
    /// `sorted`: always in alphabetical order of their names; while the
    /// first has messages, the others wait.
    Sorted,
    /// `priority`: always in the order they are consumed in (`-Q a,b`:
    /// `a` first); while the first has messages, the others wait.
    Priority,
}

/// The transport options greenpool reads; any other key is refused, so
/// that no setting of a deployment is silently ignored.
///
/// Broker options: `master_name`, `sentinel_kwargs` (`password`),
/// `visibility_timeout`, `global_keyprefix`, `sep`, `priority_steps`,
/// `unacked_key`, `unacked_index_key`, `unacked_mutex_key`,
/// `fanout_prefix`, `fanout_patterns`, `queue_order_strategy`,
/// `socket_timeout`, `socket_connect_timeout`, `health_check_interval`
/// (see [`SocketOptions`]), and `ack_emulation` (only `true`: greenpool
/// always keeps kombu's unacked bookkeeping). Result backend options:
/// `master_name`, `sentinel_kwargs` (Celery's result backend reads its
/// socket settings from `redis_socket_timeout` and the like, not from
/// its transport options, so they are refused there).
///
/// ```
/// use std::time::Duration;
/// use greenpool_celery::{QueueOrder, TransportOptions};
/// let t = TransportOptions::parse(
///     r#"{"global_keyprefix": "gp:", "queue_order_strategy": "priority",
///         "health_check_interval": 30, "visibility_timeout": 600}"#,
///     "broker",
/// ).unwrap();
/// assert_eq!(t.keys.global_keyprefix, "gp:");
/// assert_eq!(t.queue_order_strategy, QueueOrder::Priority);
/// assert_eq!(t.socket.health_check_interval, Some(Duration::from_secs(30)));
/// assert_eq!(t.visibility_timeout, Some(Duration::from_secs(600)));
/// let e = TransportOptions::parse(r#"{"max_connections": 20}"#, "broker").unwrap_err();
/// assert!(e.to_string().contains("max_connections"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TransportOptions {
    /// `master_name` and `sentinel_kwargs`.
    pub sentinel: SentinelOptions,
    /// `visibility_timeout` in seconds (broker options only).
    pub visibility_timeout: Option<Duration>,
    /// The key names (broker options only): `global_keyprefix`, `sep`,
    /// `priority_steps`, `unacked_*key`, `fanout_prefix`,
    /// `fanout_patterns`.
    pub keys: RedisKeys,
    /// `queue_order_strategy` (broker options only).
    pub queue_order_strategy: QueueOrder,
    /// `socket_timeout`, `socket_connect_timeout` and
    /// `health_check_interval`, in seconds (broker options only).
    pub socket: SocketOptions,
}

/// Options kombu or Celery accept that greenpool refuses, with the
/// reason given.
const REFUSED: &[(&str, &str)] = &[
    (
        "max_connections",
        "greenpool multiplexes one connection per link, so there is no pool to bound",
    ),
    (
        "socket_keepalive",
        "TCP keepalive is always on; health_check_interval sets its idle time",
    ),
    (
        "socket_keepalive_options",
        "TCP keepalive is always on; health_check_interval sets its idle time",
    ),
    (
        "retry_on_timeout",
        "a timed-out command always counts as a lost connection and is retried after reconnecting",
    ),
    (
        "retry_policy",
        "reconnection follows broker_connection_retry and broker_connection_max_retries",
    ),
    (
        "unacked_restore_limit",
        "the restore sweep always restores every message over the visibility timeout",
    ),
    (
        "unacked_restore_interval",
        "use --restore-interval (GREENPOOL_RESTORE_INTERVAL), the period of the whole sweep",
    ),
    (
        "unacked_restore_throttle",
        "use --restore-interval (GREENPOOL_RESTORE_INTERVAL), the period of the whole sweep",
    ),
    (
        "unacked_mutex_expire",
        "the sweep's lock always expires after 300 s, kombu's default",
    ),
    (
        "reauth_check_interval",
        "streaming re-authentication is not supported",
    ),
    ("client_name", "connections do not name themselves"),
    (
        "global_keyprefix",
        "a result backend key prefix is not supported yet (the broker's is)",
    ),
];

/// The broker options greenpool reads.
const BROKER_KEYS: &[&str] = &[
    "master_name",
    "sentinel_kwargs",
    "visibility_timeout",
    "global_keyprefix",
    "sep",
    "priority_steps",
    "unacked_key",
    "unacked_index_key",
    "unacked_mutex_key",
    "fanout_prefix",
    "fanout_patterns",
    "queue_order_strategy",
    "health_check_interval",
    "socket_timeout",
    "socket_connect_timeout",
    "ack_emulation",
];

/// The result backend options greenpool reads.
const BACKEND_KEYS: &[&str] = &["master_name", "sentinel_kwargs"];

/// Broker options Celery's result backend reads from its own settings
/// instead of `result_backend_transport_options`.
const BACKEND_SETTINGS: &[(&str, &str)] = &[
    ("socket_timeout", "redis_socket_timeout"),
    ("socket_connect_timeout", "redis_socket_connect_timeout"),
    (
        "health_check_interval",
        "redis_backend_health_check_interval",
    ),
];

/// Seconds as a positive duration, or why not.
fn positive_secs(key: &str, n: &Number) -> Result<Duration, String> {
    let secs = n.as_f64().unwrap_or(f64::NAN);
    crate::seconds::duration_from_secs("seconds", secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{key} {n} is not a usable number of seconds"))
}

/// A string value, or why not.
fn string(key: &str, v: Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("{key} must be a string, not {other}")),
    }
}

impl TransportOptions {
    /// Reads `json`, the options of the `which` connection (`"broker"` or
    /// `"result backend"`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::TransportOptions`] for text that is not a JSON
    /// object, a value of the wrong type, or a key greenpool does not
    /// support (named, with the reason or the keys it supports).
    pub fn parse(json: &str, which: &'static str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::TransportOptions { which, reason };
        let map: Map<String, Value> = match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("expected a JSON object".to_owned())),
            Err(e) => return Err(bad(format!("not JSON: {e}"))),
        };
        let mut out = TransportOptions::default();
        for (key, value) in map {
            out.read(which, &key, value).map_err(bad)?;
        }
        if let Some(why) = out.keys.problem() {
            return Err(bad(why.to_owned()));
        }
        Ok(out)
    }

    /// Refuses a visibility timeout `given` by `source` (a flag or a
    /// variable) that differs from this `visibility_timeout`: which
    /// should win would be a guess. Equal values, or only one of them,
    /// are fine.
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenpool_celery::TransportOptions;
    /// let t = TransportOptions::parse(r#"{"visibility_timeout": 60}"#, "broker").unwrap();
    /// assert!(t.check_visibility_timeout(Some(Duration::from_secs(60)), "--visibility-timeout").is_ok());
    /// assert!(t.check_visibility_timeout(Some(Duration::from_secs(5)), "--visibility-timeout").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::TransportOptions`] when both are given and differ.
    pub fn check_visibility_timeout(
        &self,
        given: Option<Duration>,
        source: &str,
    ) -> Result<(), ConfigError> {
        match (given, self.visibility_timeout) {
            (Some(a), Some(b)) if a != b => Err(ConfigError::TransportOptions {
                which: "broker",
                reason: format!(
                    "visibility_timeout {} s conflicts with {source} {} s: set one of them",
                    b.as_secs_f64(),
                    a.as_secs_f64()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Reads one key.
    fn read(&mut self, which: &'static str, key: &str, value: Value) -> Result<(), String> {
        let broker = which == "broker";
        match (key, value) {
            ("master_name", Value::String(s)) if !s.is_empty() => {
                self.sentinel.master_name = Some(s);
            }
            ("sentinel_kwargs", Value::Object(kw)) => {
                for (k, v) in kw {
                    match (k.as_str(), v) {
                        ("password", Value::String(p)) => {
                            self.sentinel.sentinel_password = Some(p);
                        }
                        ("password", Value::Null) => {}
                        (other, _) => {
                            return Err(format!(
                                "sentinel_kwargs.{other} is not supported (only password is)"
                            ))
                        }
                    }
                }
            }
            ("health_check_interval", Value::Number(n)) if broker => {
                self.socket.health_check_interval = if n.as_f64() == Some(0.0) {
                    None
                } else {
                    Some(positive_secs(key, &n)?)
                };
            }
            ("socket_timeout" | "socket_connect_timeout", Value::Null) if broker => {}
            ("socket_timeout", Value::Number(n)) if broker => {
                self.socket.socket_timeout = Some(positive_secs(key, &n)?);
            }
            ("socket_connect_timeout", Value::Number(n)) if broker => {
                self.socket.socket_connect_timeout = Some(positive_secs(key, &n)?);
            }
            ("visibility_timeout", Value::Number(n)) if broker => {
                self.visibility_timeout = Some(positive_secs(key, &n)?);
            }
            ("global_keyprefix", v) if broker => self.keys.global_keyprefix = string(key, v)?,
            ("sep", v) if broker => self.keys.sep = string(key, v)?,
            ("unacked_key", v) if broker => self.keys.unacked_key = string(key, v)?,
            ("unacked_index_key", v) if broker => self.keys.unacked_index_key = string(key, v)?,
            ("unacked_mutex_key", v) if broker => self.keys.unacked_mutex_key = string(key, v)?,
            ("fanout_prefix", Value::Bool(true)) if broker => {
                self.keys.fanout_prefix = RedisKeys::default().fanout_prefix;
            }
            ("fanout_prefix", Value::Bool(false)) if broker => self.keys.fanout_prefix.clear(),
            ("fanout_prefix", Value::String(s)) if broker => self.keys.fanout_prefix = s,
            ("fanout_patterns", Value::Bool(b)) if broker => self.keys.fanout_patterns = b,
            ("ack_emulation", Value::Bool(true)) if broker => {}
            ("ack_emulation", _) if broker => {
                return Err(
                    "ack_emulation must be true: greenpool always keeps kombu's \
                            unacked bookkeeping (and restores by visibility timeout)"
                        .to_owned(),
                )
            }
            ("priority_steps", Value::Array(steps)) if broker => {
                self.keys.priority_steps = steps
                    .iter()
                    .map(|s| s.as_u64().and_then(|s| u8::try_from(s).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| {
                        format!(
                            "priority_steps must be a list of whole numbers 0-255, not {}",
                            Value::Array(steps.clone())
                        )
                    })?;
            }
            ("queue_order_strategy", Value::String(s)) if broker => {
                self.queue_order_strategy = match s.as_str() {
                    "round_robin" => QueueOrder::RoundRobin,
                    "sorted" => QueueOrder::Sorted,
                    "priority" => QueueOrder::Priority,
                    other => {
                        return Err(format!(
                            "queue_order_strategy {other:?} is not one of round_robin, sorted, \
                             priority"
                        ))
                    }
                };
            }
            (key, value) => {
                if let Some((_, setting)) = BACKEND_SETTINGS.iter().find(|(k, _)| *k == key) {
                    if !broker {
                        return Err(format!(
                            "{key} is not a result backend transport option: Celery reads it \
                             from the {setting} setting, which greenpool does not read"
                        ));
                    }
                }
                if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == key) {
                    return Err(format!("{key} is not supported by greenpool: {why}"));
                }
                let supported = if broker { BROKER_KEYS } else { BACKEND_KEYS };
                if supported.contains(&key) {
                    return Err(format!("{key} = {value} is not a usable value"));
                }
                return Err(format!(
                    "{key} = {value} is not supported by greenpool (supported: {})",
                    supported.join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "transport_options_tests.rs"]
mod tests;
