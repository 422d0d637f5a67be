//! The `GREENPOOL_*` environment variables: every one a worker reads is
//! parsed here, for the library ([`WorkerConfig::with_env`]) and the
//! `greenpool worker` command alike, so that a value means the same
//! wherever it is given.

use std::time::Duration;

use super::WorkerConfig;
use crate::error::ConfigError;

/// The variables [`WorkerConfig::with_env`] reads, each with the setting
/// it overrides: documentation and the CLI's help list them from here.
pub const WORKER_VARIABLES: &[(&str, &str)] = &[
    ("GREENPOOL_BROKER_URL", "broker URL"),
    (
        "GREENPOOL_RESULT_BACKEND",
        "result backend URL (empty or `none`: none)",
    ),
    ("GREENPOOL_CONCURRENCY", "pool limit (-c)"),
    ("GREENPOOL_QUEUES", "queues, comma-separated (-Q)"),
    (
        "GREENPOOL_PREFETCH_MULTIPLIER",
        "unacked messages per pool slot",
    ),
    (
        "GREENPOOL_HOSTNAME",
        "node name (-n; `%h` is the host name)",
    ),
    ("GREENPOOL_ACKS_LATE", "ack after the task (true/false)"),
    ("GREENPOOL_TRACK_STARTED", "store STARTED (true/false)"),
    (
        "GREENPOOL_RESULT_EXTENDED",
        "store request details (true/false)",
    ),
    (
        "GREENPOOL_RESULT_EXPIRES",
        "result lifetime in seconds (0: forever)",
    ),
    ("GREENPOOL_EVENTS", "send task events (-E; true/false)"),
    ("GREENPOOL_TIME_LIMIT", "hard time limit in seconds"),
    ("GREENPOOL_SOFT_TIME_LIMIT", "soft time limit in seconds"),
    ("GREENPOOL_MAX_MESSAGE_SIZE", "largest message in bytes"),
    ("GREENPOOL_METRICS", "address of GET /metrics"),
    (
        "GREENPOOL_VISIBILITY_TIMEOUT",
        "Redis: visibility timeout in seconds",
    ),
    (
        "GREENPOOL_RESTORE_INTERVAL",
        "Redis: seconds between restore sweeps",
    ),
    (
        "GREENPOOL_SYNC_REPLICAS",
        "Redis: replicas that must hold each batch of results and acks (WAIT; 0: none)",
    ),
    (
        "GREENPOOL_SYNC_REPLICAS_TIMEOUT",
        "Redis: seconds one WAIT for the replicas may take",
    ),
    (
        "GREENPOOL_BROKER_TRANSPORT_OPTIONS",
        "Redis: broker_transport_options as JSON (sentinel, visibility_timeout, key names, queue_order_strategy, socket options)",
    ),
    (
        "GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS",
        "Redis: result_backend_transport_options as JSON (master_name, sentinel_kwargs)",
    ),
    (
        "GREENPOOL_QUEUE_MAX_PRIORITY",
        "AMQP: x-max-priority of declared queues",
    ),
    (
        "GREENPOOL_QUORUM_QUEUES",
        "AMQP: declare quorum queues (true/false)",
    ),
    (
        "GREENPOOL_BROKER_CONNECTION_RETRY",
        "reconnect after a loss (true/false)",
    ),
    (
        "GREENPOOL_BROKER_CONNECTION_MAX_RETRIES",
        "attempts before giving up (0: forever)",
    ),
    (
        "GREENPOOL_BROKER_CONNECTION_RETRY_ON_STARTUP",
        "retry the first connection (true/false)",
    ),
];

/// Reads one variable through `get` and parses it.
struct Reader<F> {
    get: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn raw(&self, name: &'static str) -> Option<String> {
        (self.get)(name)
    }

    fn parse<T>(
        &self,
        name: &'static str,
        how: fn(&str) -> Result<T, &'static str>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(name) {
            None => Ok(None),
            Some(value) => match how(value.trim()) {
                Ok(v) => Ok(Some(v)),
                Err(reason) => Err(ConfigError::Env {
                    name,
                    value,
                    reason,
                }),
            },
        }
    }
}

fn whole(v: &str) -> Result<u64, &'static str> {
    v.parse().map_err(|_| "expected a whole number")
}

fn flag(v: &str) -> Result<bool, &'static str> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false"),
    }
}

fn seconds(v: &str) -> Result<Duration, &'static str> {
    let s: f64 = v.parse().map_err(|_| "expected seconds")?;
    crate::seconds::duration_from_secs("", s)
        .map_err(|_| "expected zero or more seconds, at most 100 years")
}

fn limit(v: &str) -> Result<f64, &'static str> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err("expected a positive number of seconds"),
    }
}

fn priority(v: &str) -> Result<u8, &'static str> {
    v.parse().map_err(|_| "expected a priority from 0 to 255")
}

fn address(v: &str) -> Result<std::net::SocketAddr, &'static str> {
    v.parse()
        .map_err(|_| "expected an address such as 127.0.0.1:9808")
}

/// `config` with every variable `get` yields applied.
pub(super) fn apply(
    mut config: WorkerConfig,
    get: impl Fn(&str) -> Option<String>,
) -> Result<WorkerConfig, ConfigError> {
    let r = Reader { get };
    if let Some(v) = r.raw("GREENPOOL_BROKER_URL") {
        // Results follow the broker unless they were set apart.
        if config.result_backend.as_deref() == Some(config.broker_url.as_str()) {
            config.result_backend = Some(v.clone());
        }
        config.broker_url = v;
    }
    if let Some(v) = r.raw("GREENPOOL_RESULT_BACKEND") {
        let none = v.is_empty() || v.eq_ignore_ascii_case("none");
        config.result_backend = (!none).then_some(v);
    }
    if let Some(n) = r.parse("GREENPOOL_CONCURRENCY", whole)? {
        config.concurrency = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(v) = r.raw("GREENPOOL_QUEUES") {
        config = config.queues(v.split(',').map(str::trim).filter(|q| !q.is_empty()));
    }
    if let Some(n) = r.parse("GREENPOOL_PREFETCH_MULTIPLIER", whole)? {
        config.prefetch_multiplier = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(v) = r.raw("GREENPOOL_HOSTNAME") {
        config.hostname = super::node_name(&v);
    }
    if let Some(b) = r.parse("GREENPOOL_ACKS_LATE", flag)? {
        config.acks_late = b;
    }
    if let Some(b) = r.parse("GREENPOOL_TRACK_STARTED", flag)? {
        config.track_started = b;
    }
    if let Some(b) = r.parse("GREENPOOL_RESULT_EXTENDED", flag)? {
        config.result_extended = b;
    }
    if let Some(d) = r.parse("GREENPOOL_RESULT_EXPIRES", seconds)? {
        config.result_expires = (!d.is_zero()).then_some(d);
    }
    if let Some(b) = r.parse("GREENPOOL_EVENTS", flag)? {
        config.send_task_events = b;
    }
    if let Some(s) = r.parse("GREENPOOL_TIME_LIMIT", limit)? {
        config.limits.time_limit = Some(s);
    }
    if let Some(s) = r.parse("GREENPOOL_SOFT_TIME_LIMIT", limit)? {
        config.limits.soft_time_limit = Some(s);
    }
    if let Some(n) = r.parse("GREENPOOL_MAX_MESSAGE_SIZE", whole)? {
        config.limits.max_message_size = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(a) = r.parse("GREENPOOL_METRICS", address)? {
        config.metrics = Some(a);
    }
    let visibility = r.parse("GREENPOOL_VISIBILITY_TIMEOUT", seconds)?;
    if let Some(d) = visibility {
        config.redis.visibility_timeout = d;
    }
    if let Some(d) = r.parse("GREENPOOL_RESTORE_INTERVAL", seconds)? {
        config.redis.restore_interval = d;
    }
    let replicas = |v: &str| {
        whole(v).and_then(|n| u32::try_from(n).map_err(|_| "expected a number below 2^32"))
    };
    if let Some(n) = r.parse("GREENPOOL_SYNC_REPLICAS", replicas)? {
        config.redis.sync_replicas = n;
    }
    if let Some(d) = r.parse("GREENPOOL_SYNC_REPLICAS_TIMEOUT", seconds)? {
        config.redis.sync_replicas_timeout = d;
    }
    if let Some(v) = r.raw("GREENPOOL_BROKER_TRANSPORT_OPTIONS") {
        let t = super::TransportOptions::parse(&v, "broker")?;
        // The variable read above (spelt in two parts: the listing test
        // counts one read of each variable).
        let source = concat!("GREENPOOL_", "VISIBILITY_TIMEOUT");
        t.check_visibility_timeout(visibility, source)?;
        config = config.broker_transport_options(t);
    }
    if let Some(v) = r.raw("GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS") {
        config = config.result_backend_transport_options(super::TransportOptions::parse(
            &v,
            "result backend",
        )?);
    }
    if let Some(p) = r.parse("GREENPOOL_QUEUE_MAX_PRIORITY", priority)? {
        config.amqp.queue_max_priority = Some(p);
    }
    if let Some(b) = r.parse("GREENPOOL_QUORUM_QUEUES", flag)? {
        config.amqp.quorum_queues = b;
    }
    if let Some(b) = r.parse("GREENPOOL_BROKER_CONNECTION_RETRY", flag)? {
        config.connection.retry = b;
    }
    if let Some(n) = r.parse("GREENPOOL_BROKER_CONNECTION_MAX_RETRIES", whole)? {
        config.connection.max_retries = u32::try_from(n).ok().filter(|n| *n > 0);
    }
    if let Some(b) = r.parse("GREENPOOL_BROKER_CONNECTION_RETRY_ON_STARTUP", flag)? {
        config.connection.retry_on_startup = Some(b);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<WorkerConfig, ConfigError> {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        apply(WorkerConfig::new("redis://x"), |k| {
            vars.get(k).map(|v| (*v).to_owned())
        })
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = with(&[
            ("GREENPOOL_CONCURRENCY", "7"),
            ("GREENPOOL_QUEUES", "a, b,,c"),
            ("GREENPOOL_ACKS_LATE", "yes"),
            ("GREENPOOL_RESULT_EXPIRES", "0"),
            ("GREENPOOL_VISIBILITY_TIMEOUT", "2.5"),
            ("GREENPOOL_RESULT_BACKEND", ""),
            ("GREENPOOL_HOSTNAME", "w1"),
            ("GREENPOOL_QUORUM_QUEUES", "1"),
            ("GREENPOOL_QUEUE_MAX_PRIORITY", "9"),
            ("GREENPOOL_EVENTS", "on"),
            ("GREENPOOL_TIME_LIMIT", "30"),
            ("GREENPOOL_METRICS", "127.0.0.1:0"),
            ("GREENPOOL_BROKER_CONNECTION_MAX_RETRIES", "0"),
        ])
        .unwrap();
        assert_eq!(c.concurrency, 7);
        assert_eq!(c.queues, ["a", "b", "c"]);
        assert!(c.acks_late);
        assert_eq!(c.result_expires, None);
        assert_eq!(c.result_backend, None);
        assert_eq!(c.redis.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(c.prefetch_count(), 28);
        assert_eq!(c.hostname, "celery@w1");
        assert!(c.amqp.quorum_queues);
        assert_eq!(c.amqp.queue_max_priority, Some(9));
        assert!(c.send_task_events);
        assert_eq!(c.limits.time_limit, Some(30.0));
        assert!(c.metrics.is_some());
        assert_eq!(c.connection.max_retries, None, "0 retries for ever");
        let c = with(&[("GREENPOOL_BROKER_URL", "redis://y/1")]).unwrap();
        assert_eq!(
            c.result_backend.as_deref(),
            Some("redis://y/1"),
            "results follow"
        );
    }

    #[test]
    fn transport_options_come_from_the_environment() {
        let c = with(&[
            (
                "GREENPOOL_BROKER_TRANSPORT_OPTIONS",
                r#"{"global_keyprefix": "gp:", "queue_order_strategy": "sorted",
                    "visibility_timeout": 60, "health_check_interval": 5}"#,
            ),
            ("GREENPOOL_VISIBILITY_TIMEOUT", "60"),
            (
                "GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS",
                r#"{"master_name": "results"}"#,
            ),
        ])
        .unwrap();
        assert_eq!(c.redis.keys.global_keyprefix, "gp:");
        assert_eq!(c.redis.queue_order, crate::QueueOrder::Sorted);
        assert_eq!(c.redis.visibility_timeout, Duration::from_secs(60));
        assert_eq!(
            c.redis.broker_socket.health_check_interval,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            c.redis.backend_sentinel.master_name.as_deref(),
            Some("results")
        );
        let e = with(&[
            (
                "GREENPOOL_BROKER_TRANSPORT_OPTIONS",
                r#"{"visibility_timeout": 60}"#,
            ),
            ("GREENPOOL_VISIBILITY_TIMEOUT", "30"),
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("conflicts with GREENPOOL_VISIBILITY_TIMEOUT"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = with(&[("GREENPOOL_CONCURRENCY", "many")]).unwrap_err();
        assert!(e.to_string().contains("GREENPOOL_CONCURRENCY"), "{e}");
        for huge in ["1e20", "NaN", "-1", "inf"] {
            let e = with(&[("GREENPOOL_VISIBILITY_TIMEOUT", huge)]).unwrap_err();
            assert!(
                e.to_string().contains("GREENPOOL_VISIBILITY_TIMEOUT"),
                "{e}"
            );
        }
        for bad in ["0", "-3", "NaN", "soon"] {
            let e = with(&[("GREENPOOL_TIME_LIMIT", bad)]).unwrap_err();
            assert!(e.to_string().contains("GREENPOOL_TIME_LIMIT"), "{e}");
        }
        let e = with(&[("GREENPOOL_ACKS_LATE", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn every_variable_read_is_listed_and_every_listed_one_is_read() {
        let source = include_str!("env.rs");
        let (code, _) = source.split_once("#[cfg(test)]").unwrap_or((source, ""));
        let named: Vec<&str> = code
            .split('"')
            .filter(|s| s.starts_with("GREENPOOL_") && !s.ends_with('_'))
            .collect();
        for name in &named {
            assert!(
                WORKER_VARIABLES.iter().any(|(n, _)| n == name),
                "{name} is read but not listed"
            );
        }
        for (name, _) in WORKER_VARIABLES {
            let uses = named.iter().filter(|n| *n == name).count();
            assert_eq!(uses, 2, "{name}: listed once and read once");
        }
    }
}
