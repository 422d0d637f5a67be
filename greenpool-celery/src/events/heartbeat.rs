//! `worker-online`, `worker-heartbeat` every two seconds, and
//! `worker-offline`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::control::Node;

/// Seconds between heartbeats (Celery's default `freq`).
pub(crate) const FREQ: f64 = 2.0;

/// The one-, five- and fifteen-minute load averages, rounded to two
/// places as Celery sends them; zeros where `/proc/loadavg` is missing.
fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = field
                .parse::<f64>()
                .map_or(0.0, |v| (v * 100.0).round() / 100.0);
        }
    }
    out
}

/// The fields of worker events: `freq`, `active`, `processed`,
/// `loadavg` and the software identity.
pub(crate) fn fields(node: &Node, freq: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("freq".into(), json!(freq));
    m.insert("active".into(), json!(node.requests.active_count()));
    m.insert("processed".into(), json!(node.recorder.processed()));
    m.insert("loadavg".into(), json!(loadavg()));
    m.insert("sw_ident".into(), json!("greenpool"));
    m.insert("sw_ver".into(), json!(env!("CARGO_PKG_VERSION")));
    m.insert("sw_sys".into(), json!(sw_sys()));
    m
}

fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        other => other,
    }
}

/// Sends `worker-online`, then a heartbeat every [`FREQ`] seconds until
/// `stop`.
pub(crate) async fn run(node: Arc<Node>, stop: CancellationToken) {
    node.recorder
        .events()
        .send("worker-online", fields(&node, FREQ));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(FREQ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        node.recorder
            .events()
            .send("worker-heartbeat", fields(&node, FREQ));
    }
}

/// Sends `worker-offline` and waits until it is out.
pub(crate) async fn offline(node: &Node) {
    node.recorder
        .events()
        .send("worker-offline", fields(node, FREQ));
    node.recorder.events().flush().await;
}
