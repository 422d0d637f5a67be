//! kombu's key names: priority lists, and (with the `redis` feature)
//! bindings and ack emulation.

/// Separator kombu puts between a queue name and its priority step, and
/// between the parts of a binding entry.
pub(crate) const SEP: &str = "\x06\x16";

/// kombu's default `priority_steps`.
pub(crate) const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The hash of unacked messages: tag -> `[envelope, exchange, routing_key]`.
#[cfg(feature = "redis")]
pub(crate) const UNACKED: &str = "unacked";
/// The zset of delivery times: tag -> unix seconds.
#[cfg(feature = "redis")]
pub(crate) const UNACKED_INDEX: &str = "unacked_index";
/// The lock that lets one worker at a time run the restore sweep.
#[cfg(feature = "redis")]
pub(crate) const UNACKED_MUTEX: &str = "unacked_mutex";

/// The set of workers that have in-flight lists (see [`inflight_key`]).
#[cfg(feature = "redis")]
pub(crate) const WORKERS: &str = "greenpool.workers";

/// A worker's in-flight list for one queue key: where step 1 of a fetch
/// moves messages until step 2 records them in `unacked`.
#[cfg(feature = "redis")]
pub(crate) fn inflight_key(worker: &str, queue_key: &str) -> String {
    format!("greenpool.inflight.{worker}{SEP}{queue_key}")
}

/// A worker's hash of in-flight lists: queue key -> in-flight list, so
/// that another worker can return them without knowing its queues.
#[cfg(feature = "redis")]
pub(crate) fn inflight_hash(worker: &str) -> String {
    format!("greenpool.inflight.{worker}")
}

/// A worker's liveness key, set with an expiry and refreshed while it
/// runs; once it is gone, another worker returns its in-flight lists.
#[cfg(feature = "redis")]
pub(crate) fn alive_key(worker: &str) -> String {
    format!("greenpool.alive.{worker}")
}

/// The list key for `queue` at message priority `priority` (0–9, clamped).
pub(crate) fn queue_key(queue: &str, priority: u8) -> String {
    let p = priority.min(9);
    let step = PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|s| *s <= p)
        .unwrap_or(0);
    if step == 0 {
        queue.to_owned()
    } else {
        format!("{queue}{SEP}{step}")
    }
}

/// The binding table of an exchange.
#[cfg(feature = "redis")]
pub(crate) fn binding_key(exchange: &str) -> String {
    format!("_kombu.binding.{exchange}")
}

/// The persistent copy of the binding table (kombu 5.6+).
#[cfg(feature = "redis")]
pub(crate) fn binding_permanent_key(exchange: &str) -> String {
    format!("_kombu.binding_permanent.{exchange}")
}

/// A binding table member: `routing_key SEP pattern SEP queue`.
#[cfg(feature = "redis")]
pub(crate) fn binding_member(routing_key: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{SEP}{queue}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_to_kombu_steps() {
        let keys: Vec<String> = (0..=10).map(|p| queue_key("q", p)).collect();
        assert_eq!(keys[0], "q");
        assert_eq!(keys[2], "q");
        assert_eq!(keys[3], "q\x06\x163");
        assert_eq!(keys[5], "q\x06\x163");
        assert_eq!(keys[6], "q\x06\x166");
        assert_eq!(keys[8], "q\x06\x166");
        assert_eq!(keys[9], "q\x06\x169");
        assert_eq!(keys[10], "q\x06\x169");
    }
}
