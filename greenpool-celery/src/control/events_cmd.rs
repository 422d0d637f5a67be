//! `enable_events`, `disable_events` and `heartbeat`.

use std::sync::Arc;

use serde_json::json;

use super::node::Node;
use super::table::{Answer, Args};

/// `enable_events`: task events on.
pub(crate) fn enable_events(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    if node.recorder.events().set_task_events(true) {
        return Ok(Some(json!({"ok": "task events already enabled"})));
    }
    tracing::info!("Events of group {{task}} enabled by remote.");
    Ok(Some(json!({"ok": "task events enabled"})))
}

/// `disable_events`: task events off (worker events go on).
pub(crate) fn disable_events(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    if !node.recorder.events().set_task_events(false) {
        return Ok(Some(json!({"ok": "task events already disabled"})));
    }
    tracing::info!("Events of group {{task}} disabled by remote.");
    Ok(Some(json!({"ok": "task events disabled"})))
}

/// `heartbeat`: sends a `worker-heartbeat` now (Celery's carries
/// `freq=5`); answers `null`.
pub(crate) fn heartbeat(node: &Arc<Node>, _: &Args<'_>) -> Answer {
    tracing::debug!("Heartbeat requested by remote.");
    let fields = crate::events::heartbeat::fields(node, 5.0);
    node.recorder.events().send("worker-heartbeat", fields);
    Ok(Some(serde_json::Value::Null))
}
