//! `pool_grow`, `pool_shrink`, `autoscale` and `pool_restart`.

use std::sync::Arc;

use serde_json::json;

use super::node::Node;
use super::table::{Answer, Args};

/// `n` (default 1), not negative.
fn count(args: &Args<'_>) -> Result<usize, String> {
    let n = args.int("n")?.unwrap_or(1);
    usize::try_from(n).map_err(|_| format!("ValueError('n must not be negative, got {n}')"))
}

/// `pool_grow`: the pool's limit and the prefetch window grow by n and
/// n × multiplier; refused while the autoscaler owns the size.
pub(crate) fn pool_grow(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    if node.autoscaler.is_some() {
        return Ok(Some(json!({"error":
            "pool_grow is not supported with autoscale. Adjust autoscale range instead."})));
    }
    let n = count(args)?;
    let limit = node
        .pool
        .grow(n)
        .map_err(|e| format!("ValueError('{e}')"))?;
    node.prefetch
        .grow(n.saturating_mul(node.config.prefetch_multiplier));
    tracing::info!("pool grown by {n} to {limit} (remote)");
    Ok(Some(json!({"ok": "pool will grow"})))
}

/// `pool_shrink`: as `pool_grow`, the other way. Running tasks are never
/// interrupted; fewer start until the running count is under the limit.
pub(crate) fn pool_shrink(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    if node.autoscaler.is_some() {
        return Ok(Some(json!({"error":
            "pool_shrink is not supported with autoscale. Adjust autoscale range instead."})));
    }
    let n = count(args)?;
    let limit = node
        .pool
        .shrink(n)
        .map_err(|e| format!("ValueError('{e}')"))?;
    node.prefetch
        .shrink(n.saturating_mul(node.config.prefetch_multiplier));
    tracing::info!("pool shrunk by {n} to {limit} (remote)");
    Ok(Some(json!({"ok": "pool will shrink"})))
}

/// `autoscale`: sets `max` and `min` when the autoscaler is on.
pub(crate) fn autoscale(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let Some(scaler) = &node.autoscaler else {
        return Err("ValueError('Autoscale not enabled')".to_owned());
    };
    let to_usize = |v: Option<i64>| v.and_then(|n| usize::try_from(n).ok());
    let (max, min) = scaler.update(to_usize(args.int("max")?), to_usize(args.int("min")?));
    Ok(Some(
        json!({"ok": format!("autoscale now max={max} min={min}")}),
    ))
}

/// `pool_restart`: not offered (there are no modules to reload), answered
/// as a worker without `worker_pool_restarts` does.
pub(crate) fn pool_restart(_: &Arc<Node>, _: &Args<'_>) -> Answer {
    Err("ValueError('Pool restarts not enabled')".to_owned())
}
