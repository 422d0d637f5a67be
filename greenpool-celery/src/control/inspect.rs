//! The read-only commands (`celery inspect …`), in the reply shapes of a
//! stock worker.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::node::Node;
use super::table::{Answer, Args};

fn ok(v: Value) -> Answer {
    Ok(Some(v))
}

/// `ping`: `{"ok": "pong"}`.
pub(crate) fn ping(_: &Arc<Node>, _: &Args<'_>) -> Answer {
    ok(json!({"ok": "pong"}))
}

/// `stats`: totals, pid, clock (a string, as Celery sends it), uptime,
/// the pool's `info()`, the broker, the prefetch window and rusage.
pub(crate) fn stats(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    let total = node.recorder.totals();
    let pool = serde_json::to_value(node.pool.info()).map_err(|e| format!("{e}"))?;
    ok(json!({
        "total": total,
        "pid": std::process::id(),
        "clock": node.clock.value().to_string(),
        "uptime": node.started.elapsed().as_secs(),
        "pool": pool,
        "broker": broker_info(node),
        // Celery raises the window by one for each request waiting for
        // its ETA; so does the consumer here (such a request gives its
        // permit back), and stats say so.
        "prefetch_count": node.prefetch.size() + node.requests.scheduled_count(),
        "rusage": super::rusage::rusage(),
    }))
}

/// kombu's `Connection.info()` for the broker URL (password left out).
fn broker_info(node: &Node) -> Value {
    node.wire
        .info(node.config.connection.connect_timeout.as_secs_f64())
}

/// `active`: requests running now.
pub(crate) fn active(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    ok(Value::Array(node.requests.active(&node.hostname)))
}

/// `reserved`: requests received and not yet running or scheduled.
pub(crate) fn reserved(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    ok(Value::Array(node.requests.reserved(&node.hostname)))
}

/// `scheduled`: requests waiting for their ETA.
pub(crate) fn scheduled(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    ok(Value::Array(node.requests.scheduled(&node.hostname)))
}

/// `revoked`: the revoked ids.
pub(crate) fn revoked(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    let ids: Vec<Value> = node
        .revoked
        .entries()
        .into_iter()
        .map(|(id, _)| Value::String(id))
        .collect();
    ok(Value::Array(ids))
}

/// `registered`: task names, sorted; with `taskinfoitems`, Celery's
/// `"name [k=v …]"` for the attributes the worker knows (`rate_limit`).
pub(crate) fn registered(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let items = args.list("taskinfoitems");
    // Celery's built-ins (`celery.*`) only when asked for, as Celery does.
    let builtins = args.flag("builtins");
    let mut names: Vec<&str> = node.registry.names();
    names.retain(|n| builtins || !n.starts_with("celery."));
    names.sort_unstable();
    let out: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let mut fields = Vec::new();
            for item in &items {
                if item == "rate_limit" {
                    if let Some(r) = node
                        .registry
                        .get(name)
                        .and_then(|t| t.options.rate_limit.clone())
                    {
                        fields.push(format!("rate_limit={r}"));
                    }
                }
            }
            if fields.is_empty() {
                json!(name)
            } else {
                json!(format!("{name} [{}]", fields.join(" ")))
            }
        })
        .collect();
    ok(Value::Array(out))
}

/// `query_task`: `{id: [state, info]}` for the requests held.
pub(crate) fn query_task(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let ids = args.list("ids");
    ok(Value::Object(node.requests.query(&node.hostname, &ids)))
}

/// `active_queues`: kombu's `Queue.as_dict()` of each consumed queue,
/// as changed by `add_consumer` and `cancel_consumer`.
pub(crate) fn active_queues(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    let queues: Vec<Value> = node.queues.snapshot().iter().map(|q| q.as_dict()).collect();
    ok(Value::Array(queues))
}

/// A URL with its password replaced by `********`, as Celery prints it.
pub(crate) fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
            None => format!("{scheme}://:********@{host}"),
        },
        None => url.to_owned(),
    }
}

/// The settings `conf` lists, by Celery's names.
fn settings(node: &Node) -> Map<String, Value> {
    let c = &node.config;
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("broker_url", json!(mask_url(&c.broker_url)));
    put(
        "result_backend",
        json!(c.result_backend.as_deref().map(mask_url)),
    );
    put("worker_concurrency", json!(c.concurrency));
    put("worker_prefetch_multiplier", json!(c.prefetch_multiplier));
    put(
        "worker_send_task_events",
        json!(node.recorder.events().task_events()),
    );
    put("task_acks_late", json!(c.acks_late));
    put("task_track_started", json!(c.track_started));
    put("result_extended", json!(c.result_extended));
    put(
        "result_expires",
        json!(c.result_expires.map(|d| d.as_secs())),
    );
    put("task_time_limit", json!(c.limits.time_limit));
    put("task_soft_time_limit", json!(c.limits.soft_time_limit));
    put("task_queues", json!(c.queues));
    put("broker_transport_options", transport_options(c));
    m
}

/// The broker transport options in effect, as Celery's `conf` shows
/// them: the visibility timeout always, the others when not kombu's
/// defaults (the sentinel password never).
fn transport_options(c: &crate::config::WorkerConfig) -> Value {
    let mut t = Map::new();
    t.insert(
        "visibility_timeout".into(),
        json!(c.redis.visibility_timeout.as_secs()),
    );
    let k = &c.redis.keys;
    let d = crate::config::RedisKeys::default();
    let mut put = |key: &str, changed: bool, v: Value| {
        if changed {
            t.insert(key.into(), v);
        }
    };
    put(
        "global_keyprefix",
        k.global_keyprefix != d.global_keyprefix,
        json!(k.global_keyprefix),
    );
    put("sep", k.sep != d.sep, json!(k.sep));
    put(
        "priority_steps",
        k.priority_steps != d.priority_steps,
        json!(k.priority_steps),
    );
    put(
        "unacked_key",
        k.unacked_key != d.unacked_key,
        json!(k.unacked_key),
    );
    put(
        "unacked_index_key",
        k.unacked_index_key != d.unacked_index_key,
        json!(k.unacked_index_key),
    );
    put(
        "unacked_mutex_key",
        k.unacked_mutex_key != d.unacked_mutex_key,
        json!(k.unacked_mutex_key),
    );
    put(
        "fanout_prefix",
        k.fanout_prefix != d.fanout_prefix,
        json!(k.fanout_prefix),
    );
    put(
        "fanout_patterns",
        k.fanout_patterns != d.fanout_patterns,
        json!(k.fanout_patterns),
    );
    let order = match c.redis.queue_order {
        crate::config::QueueOrder::RoundRobin => "round_robin",
        crate::config::QueueOrder::Sorted => "sorted",
        crate::config::QueueOrder::Priority => "priority",
    };
    put("queue_order_strategy", order != "round_robin", json!(order));
    let s = &c.redis.broker_socket;
    for (key, d) in [
        ("health_check_interval", s.health_check_interval),
        ("socket_timeout", s.socket_timeout),
        ("socket_connect_timeout", s.socket_connect_timeout),
    ] {
        if let Some(d) = d {
            put(key, true, json!(d.as_secs_f64()));
        }
    }
    if let Some(m) = &c.redis.broker_sentinel.master_name {
        put("master_name", true, json!(m));
    }
    Value::Object(t)
}

/// `conf`: the worker's settings.
pub(crate) fn conf(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    ok(Value::Object(settings(node)))
}

/// `clock`: `{"clock": n}`.
pub(crate) fn clock(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    ok(json!({"clock": node.clock.value()}))
}

/// `report`: `{"ok": text}` in the shape of Celery's bug report.
pub(crate) fn report(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    let mut text = format!(
        "\nsoftware -> greenpool:{} (rust)\nplatform -> system:{} arch:{}\nloader   -> greenpool_celery::TaskRegistry\nsettings -> transport:{} results:{}\n\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        node.wire.transport(),
        node.config
            .result_backend
            .as_deref()
            .map_or_else(|| "disabled".to_owned(), mask_url),
    );
    for (k, v) in settings(node) {
        text.push_str(&format!("{k}: {}\n", crate::repr::repr(&v)));
    }
    ok(json!({"ok": text}))
}

/// `hello` (mingle): another node starting up sends its revoked ids and
/// gets ours and our clock; our own hello gets nothing.
pub(crate) fn hello(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    if args.str("from_node") == Some(&*node.hostname) {
        return ok(Value::Null);
    }
    if let Some(theirs) = args.get("revoked") {
        match theirs {
            Value::Object(m) => {
                for (id, at) in m {
                    match at.as_f64() {
                        Some(at) => node.revoked.add_at(id, at),
                        None => node.revoked.add(id),
                    }
                }
            }
            Value::Array(ids) => ids
                .iter()
                .filter_map(Value::as_str)
                .for_each(|id| node.revoked.add(id)),
            _ => {}
        }
    }
    let ours: Map<String, Value> = node
        .revoked
        .entries()
        .into_iter()
        .map(|(id, at)| (id, json!(at)))
        .collect();
    ok(json!({"revoked": ours, "clock": node.clock.forward()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(mask_url("redis://:pw@h:1/0"), "redis://:********@h:1/0");
        assert_eq!(mask_url("redis://u:pw@h/0"), "redis://u:********@h/0");
        assert_eq!(mask_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn conf_shows_the_transport_options_that_differ_from_kombus() {
        let c = crate::config::WorkerConfig::new("redis://x");
        assert_eq!(transport_options(&c), json!({"visibility_timeout": 3600}));
        let t = crate::TransportOptions::parse(
            r#"{"global_keyprefix": "gp:", "queue_order_strategy": "sorted",
                "health_check_interval": 30, "sentinel_kwargs": {"password": "s"}}"#,
            "broker",
        )
        .unwrap();
        let c = c.broker_transport_options(t);
        assert_eq!(
            transport_options(&c),
            json!({"visibility_timeout": 3600, "global_keyprefix": "gp:",
                   "queue_order_strategy": "sorted", "health_check_interval": 30.0})
        );
    }
}
