//! kombu's key names, built from [`RedisKeys`] (the broker's transport
//! options): priority lists, fanout channels, and (with the `redis`
//! feature) bindings and ack emulation. Every name carries the
//! `global_keyprefix`, as kombu's prefixing client puts it on every key
//! and channel it sends.

use crate::config::RedisKeys;

/// The separator inside greenpool's own key names (kombu's default `sep`;
/// these names are never split).
#[cfg(feature = "redis")]
const OWN_SEP: &str = crate::config::DEFAULT_SEP;

impl RedisKeys {
    /// The step a message of priority `priority` (0–9, clamped) goes to:
    /// the highest step at most `priority`, as kombu's `bisect` picks it
    /// (the last step when every step is higher).
    pub(crate) fn step_for(&self, priority: u8) -> u8 {
        let p = priority.min(9);
        self.priority_steps
            .iter()
            .rev()
            .find(|s| **s <= p)
            .or(self.priority_steps.last())
            .copied()
            .unwrap_or(0)
    }

    /// The list key of `queue`'s priority step `step`: the queue's name
    /// for step 0, else `queue + sep + step`.
    pub(crate) fn step_key(&self, queue: &str, step: u8) -> String {
        let prefix = &self.global_keyprefix;
        if step == 0 {
            format!("{prefix}{queue}")
        } else {
            format!("{prefix}{queue}{}{step}", self.sep)
        }
    }

    /// The list key a message of priority `priority` (0–9, clamped) sent
    /// to `queue` is pushed on, as kombu names it: the global key prefix,
    /// the queue's name, and `sep` + step unless the step is 0.
    ///
    /// ```
    /// use greenpool_celery::{RedisKeys, TransportOptions};
    /// assert_eq!(RedisKeys::default().queue_key("celery", 4), "celery\x06\x163");
    /// let t = TransportOptions::parse(r#"{"global_keyprefix": "gp:"}"#, "broker").unwrap();
    /// assert_eq!(t.keys.queue_key("celery", 0), "gp:celery");
    /// ```
    pub fn queue_key(&self, queue: &str, priority: u8) -> String {
        self.step_key(queue, self.step_for(priority))
    }

    /// The pub/sub channel of a fanout exchange: `fanout_prefix` (with
    /// `{db}` replaced), the exchange, and `/routing_key` when there is
    /// one and `fanout_patterns` is on.
    pub(crate) fn fanout_topic(&self, db: i64, exchange: &str, routing_key: &str) -> String {
        let fanout = self.fanout_prefix.replace("{db}", &db.to_string());
        let prefix = &self.global_keyprefix;
        if routing_key.is_empty() || !self.fanout_patterns {
            format!("{prefix}{fanout}{exchange}")
        } else {
            format!("{prefix}{fanout}{exchange}/{routing_key}")
        }
    }

    /// `name` with the global key prefix.
    pub(crate) fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.global_keyprefix)
    }
}

#[cfg(feature = "redis")]
impl RedisKeys {
    /// The hash of unacked messages: tag -> `[envelope, exchange,
    /// routing_key]`.
    pub(crate) fn unacked(&self) -> String {
        self.prefixed(&self.unacked_key)
    }

    /// The zset of delivery times: tag -> unix seconds.
    pub(crate) fn unacked_index(&self) -> String {
        self.prefixed(&self.unacked_index_key)
    }

    /// The lock that lets one worker at a time run the restore sweep.
    pub(crate) fn unacked_mutex(&self) -> String {
        self.prefixed(&self.unacked_mutex_key)
    }

    /// The set of workers that have in-flight lists (see
    /// [`RedisKeys::inflight_key`]).
    pub(crate) fn workers(&self) -> String {
        self.prefixed("greenpool.workers")
    }

    /// A worker's in-flight list for one queue key (itself prefixed):
    /// where step 1 of a fetch moves messages until step 2 records them
    /// in `unacked`.
    pub(crate) fn inflight_key(&self, worker: &str, queue_key: &str) -> String {
        format!(
            "{}greenpool.inflight.{worker}{OWN_SEP}{queue_key}",
            self.global_keyprefix
        )
    }

    /// A worker's hash of in-flight lists: queue key -> in-flight list, so
    /// that another worker can return them without knowing its queues.
    pub(crate) fn inflight_hash(&self, worker: &str) -> String {
        self.prefixed(&format!("greenpool.inflight.{worker}"))
    }

    /// A worker's liveness key, set with an expiry and refreshed while it
    /// runs; once it is gone, another worker returns its in-flight lists.
    pub(crate) fn alive_key(&self, worker: &str) -> String {
        self.prefixed(&format!("greenpool.alive.{worker}"))
    }

    /// The binding table of an exchange.
    pub(crate) fn binding_key(&self, exchange: &str) -> String {
        self.prefixed(&format!("_kombu.binding.{exchange}"))
    }

    /// The persistent copy of the binding table (kombu 5.6+).
    pub(crate) fn binding_permanent_key(&self, exchange: &str) -> String {
        self.prefixed(&format!("_kombu.binding_permanent.{exchange}"))
    }

    /// A binding table member: `routing_key sep pattern sep queue` (no
    /// pattern).
    pub(crate) fn binding_member(&self, routing_key: &str, queue: &str) -> String {
        let sep = &self.sep;
        format!("{routing_key}{sep}{sep}{queue}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransportOptions;

    fn keys(json: &str) -> RedisKeys {
        TransportOptions::parse(json, "broker").unwrap().keys
    }

    #[test]
    fn priorities_map_to_kombu_steps() {
        let k = RedisKeys::default();
        let keys: Vec<String> = (0..=10).map(|p| k.queue_key("q", p)).collect();
        assert_eq!(keys[0], "q");
        assert_eq!(keys[2], "q");
        assert_eq!(keys[3], "q\x06\x163");
        assert_eq!(keys[5], "q\x06\x163");
        assert_eq!(keys[6], "q\x06\x166");
        assert_eq!(keys[8], "q\x06\x166");
        assert_eq!(keys[9], "q\x06\x169");
        assert_eq!(keys[10], "q\x06\x169");
    }

    #[test]
    fn prefix_sep_and_steps_shape_every_key() {
        let k = keys(r#"{"global_keyprefix": "gp:", "sep": ":", "priority_steps": [0, 5]}"#);
        assert_eq!(k.queue_key("celery", 0), "gp:celery");
        assert_eq!(k.queue_key("celery", 4), "gp:celery");
        assert_eq!(k.queue_key("celery", 5), "gp:celery:5");
        assert_eq!(k.queue_key("celery", 200), "gp:celery:5");
        assert_eq!(k.step_key("celery", 5), "gp:celery:5");
        assert_eq!(
            k.fanout_topic(0, "celery.pidbox", ""),
            "gp:/0.celery.pidbox"
        );
        assert_eq!(
            k.fanout_topic(3, "celeryev", "task.received"),
            "gp:/3.celeryev/task.received"
        );
        #[cfg(feature = "redis")]
        {
            assert_eq!(k.unacked(), "gp:unacked");
            assert_eq!(k.unacked_index(), "gp:unacked_index");
            assert_eq!(k.unacked_mutex(), "gp:unacked_mutex");
            assert_eq!(k.binding_key("celery"), "gp:_kombu.binding.celery");
            assert_eq!(
                k.binding_permanent_key("celery"),
                "gp:_kombu.binding_permanent.celery"
            );
            assert_eq!(k.binding_member("celery", "celery"), "celery::celery");
            assert_eq!(k.workers(), "gp:greenpool.workers");
            assert_eq!(k.alive_key("w"), "gp:greenpool.alive.w");
            assert_eq!(k.inflight_hash("w"), "gp:greenpool.inflight.w");
            assert_eq!(
                k.inflight_key("w", "gp:celery:5"),
                "gp:greenpool.inflight.w\x06\x16gp:celery:5"
            );
        }
    }

    #[test]
    fn a_priority_below_every_step_goes_to_the_last_as_in_kombu() {
        let k = keys(r#"{"priority_steps": [2, 7]}"#);
        assert_eq!(k.step_for(0), 7);
        assert_eq!(k.step_for(2), 2);
        assert_eq!(k.step_for(9), 7);
        assert_eq!(k.queue_key("q", 1), "q\x06\x167");
    }

    #[test]
    fn fanout_options_change_the_channels() {
        let k = keys(r#"{"fanout_prefix": false, "fanout_patterns": false}"#);
        assert_eq!(k.fanout_topic(0, "celeryev", "task.sent"), "celeryev");
        let k = keys(r#"{"fanout_prefix": "/{db}-x.", "unacked_key": "u"}"#);
        assert_eq!(k.fanout_topic(2, "celery.pidbox", ""), "/2-x.celery.pidbox");
        #[cfg(feature = "redis")]
        assert_eq!(k.unacked(), "u");
    }
}
