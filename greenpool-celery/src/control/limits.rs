//! `rate_limit` and `time_limit` per task name.

use std::sync::{Arc, PoisonError};

use serde_json::json;

use super::node::Node;
use super::rate_limit::parse_rate;
use super::table::{Answer, Args};
use crate::protocol::TimeLimit;

/// `rate_limit`: `task_name`, `rate_limit` (`"10/s"`, `"100/m"`,
/// `"1000/h"`; empty or `"0"` turns the limit off).
pub(crate) fn rate_limit(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let name = args.str("task_name").unwrap_or_default();
    let text = match args.get("rate_limit") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let rate = match parse_rate(&text) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Some(
                json!({"error": format!("Invalid rate limit string: {e}")}),
            ))
        }
    };
    if node.registry.get(name).is_none() {
        tracing::error!("Rate limit attempt for unknown task {name}");
        return Ok(Some(json!({"error": "unknown task"})));
    }
    node.rate_limits.set(name, rate);
    if rate.is_none() {
        tracing::info!("Rate limits disabled for tasks of type {name}");
        return Ok(Some(json!({"ok": "rate limit disabled successfully"})));
    }
    tracing::info!("New rate limit for tasks of type {name}: {text}.");
    Ok(Some(json!({"ok": "new rate limit set successfully"})))
}

/// `time_limit`: `task_name`, `soft`, `hard` (seconds); applies to the
/// tasks of that name that start afterwards.
pub(crate) fn time_limit(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let name = args.str("task_name").unwrap_or_default();
    if node.registry.get(name).is_none() {
        tracing::error!("Change time limit attempt for unknown task {name}");
        return Ok(Some(json!({"error": "unknown task"})));
    }
    let limits = TimeLimit {
        hard: args.f64("hard"),
        soft: args.f64("soft"),
    };
    node.time_limits
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_owned(), limits);
    tracing::info!(
        "New time limits for tasks of type {name}: soft={:?} hard={:?}",
        limits.soft,
        limits.hard
    );
    Ok(Some(json!({"ok": "time limits set successfully"})))
}
