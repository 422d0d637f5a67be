//! The command table: each remote-control command's name and handler.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::node::Node;
use super::{consumer, events_cmd, inspect, limits, pool, revoke, shutdown};

/// What a handler answers: `Ok(Some(v))` is replied as `v`, `Ok(None)`
/// sends no reply (`shutdown`), `Err(repr)` is replied as
/// `{"error": repr}`, `repr` being the Python repr of the exception
/// Celery would raise.
pub(crate) type Answer = Result<Option<Value>, String>;

/// A command handler. Handlers do not wait: work that takes time (a
/// graceful kill) is spawned, so the mailbox answers the next request at
/// once.
pub(crate) type Handler = fn(&Arc<Node>, &Args<'_>) -> Answer;

/// The commands, by name (Celery's aliases included).
pub(crate) const COMMANDS: &[(&str, Handler)] = &[
    ("ping", inspect::ping),
    ("stats", inspect::stats),
    ("active", inspect::active),
    ("dump_active", inspect::active),
    ("reserved", inspect::reserved),
    ("dump_reserved", inspect::reserved),
    ("scheduled", inspect::scheduled),
    ("dump_schedule", inspect::scheduled),
    ("revoked", inspect::revoked),
    ("dump_revoked", inspect::revoked),
    ("registered", inspect::registered),
    ("dump_tasks", inspect::registered),
    ("query_task", inspect::query_task),
    ("active_queues", inspect::active_queues),
    ("conf", inspect::conf),
    ("dump_conf", inspect::conf),
    ("clock", inspect::clock),
    ("report", inspect::report),
    ("hello", inspect::hello),
    ("revoke", revoke::revoke),
    ("terminate", revoke::terminate),
    ("pool_grow", pool::pool_grow),
    ("pool_shrink", pool::pool_shrink),
    ("autoscale", pool::autoscale),
    ("pool_restart", pool::pool_restart),
    ("rate_limit", limits::rate_limit),
    ("time_limit", limits::time_limit),
    ("enable_events", events_cmd::enable_events),
    ("disable_events", events_cmd::disable_events),
    ("heartbeat", events_cmd::heartbeat),
    ("add_consumer", consumer::add_consumer),
    ("cancel_consumer", consumer::cancel_consumer),
    ("shutdown", shutdown::shutdown),
];

/// The handler of `method`.
pub(crate) fn lookup(method: &str) -> Option<Handler> {
    COMMANDS.iter().find(|(n, _)| *n == method).map(|(_, h)| *h)
}

/// Runs `method` with `arguments` on `node`, as kombu's `Node.dispatch`:
/// an unknown command answers `KeyError('<method>')`.
pub(crate) fn dispatch(node: &Arc<Node>, method: &str, arguments: &Map<String, Value>) -> Answer {
    match lookup(method) {
        Some(handler) => handler(node, &Args(arguments)),
        None => Err(format!(
            "KeyError({})",
            crate::repr::repr(&Value::from(method))
        )),
    }
}

/// A command's keyword arguments, read leniently as Python would.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Args<'a>(pub(crate) &'a Map<String, Value>);

impl Args<'_> {
    /// A present, non-null argument.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A string argument.
    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// A number argument (a numeric string counts, as the CLI sends some).
    pub(crate) fn f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A whole-number argument.
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("ValueError('{key} must be a whole number')")),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
                format!("ValueError(\"invalid literal for int() with base 10: '{s}'\")")
            }),
            Some(other) => Err(format!("TypeError('{key} must be a number, not {other}')")),
        }
    }

    /// A boolean argument (truthy as Python's `bool`).
    pub(crate) fn flag(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Null) => false,
        }
    }

    /// One string or a list of them.
    pub(crate) fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, (a, _)) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[i + 1..].iter().all(|(b, _)| a != b),
                "{a} twice in the table"
            );
        }
    }
}
