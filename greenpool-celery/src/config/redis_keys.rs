//! [`RedisKeys`]: how kombu's Redis transport names the keys and pub/sub
//! channels it uses, as `broker_transport_options` changes them
//! (`global_keyprefix`, `sep`, `priority_steps`, `unacked_*key`,
//! `fanout_prefix`, `fanout_patterns`). The names themselves are built in
//! the broker's `keys` module.

/// kombu's default separator between a queue name and its priority step
/// (and between the parts of a binding entry).
pub(crate) const DEFAULT_SEP: &str = "\x06\x16";

/// kombu's default `priority_steps`.
pub(crate) const DEFAULT_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The names of the broker's keys, as kombu's Redis transport builds them
/// from its transport options; the defaults are kombu's.
///
/// A worker and its clients must agree on these with every Python
/// producer and consumer of the same broker, so they are read from the
/// same `broker_transport_options` (see
/// [`TransportOptions`](crate::TransportOptions)):
///
/// ```
/// use greenpool_celery::TransportOptions;
/// let t = TransportOptions::parse(
///     r#"{"global_keyprefix": "gp:", "priority_steps": [0, 5], "sep": ":"}"#,
///     "broker",
/// ).unwrap();
/// assert_eq!(t.keys.global_keyprefix, "gp:");
/// assert_eq!(t.keys.priority_steps, [0, 5]);
/// assert_eq!(t.keys.sep, ":");
/// assert_eq!(t.keys.unacked_key, "unacked");
/// ```
///
/// With a `global_keyprefix`, every key and channel the transport uses
/// takes it in front, as kombu's prefixing client does: the queue lists
/// (every priority step), `unacked`, `unacked_index`, `unacked_mutex`,
/// the binding tables `_kombu.binding.*`, remote control's reply lists,
/// and the pub/sub channels of remote control and events
/// (`<prefix>/<db>.celery.pidbox`, `<prefix>/<db>.celeryev/...`). The
/// keys greenpool adds for its own bookkeeping (`greenpool.inflight.*`,
/// `greenpool.alive.*`, `greenpool.workers`) take it too. Result keys
/// (`celery-task-meta-*`) do not: Celery's result backend has a prefix
/// of its own in `result_backend_transport_options`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisKeys {
    /// Put in front of every key and channel (`global_keyprefix`,
    /// default empty).
    pub global_keyprefix: String,
    /// Between a queue name and its priority step, and between the parts
    /// of a binding entry (`sep`, default `"\x06\x16"`).
    pub sep: String,
    /// The priority steps, strictly increasing (`priority_steps`, default
    /// `[0, 3, 6, 9]`): a message of priority `p` goes to the list of the
    /// highest step at most `p` (step 0: the queue's own name, step `s`:
    /// `queue + sep + s`), and lower steps are served first.
    pub priority_steps: Vec<u8>,
    /// The hash of unacked messages (`unacked_key`, default `unacked`).
    pub unacked_key: String,
    /// The zset of their delivery times (`unacked_index_key`, default
    /// `unacked_index`).
    pub unacked_index_key: String,
    /// The lock of the restore sweep (`unacked_mutex_key`, default
    /// `unacked_mutex`).
    pub unacked_mutex_key: String,
    /// Put before an exchange's name to make its pub/sub channel, with
    /// `{db}` replaced by the database number (`fanout_prefix`: `true`,
    /// the default, is `/{db}.`; `false` is empty; a string is used as
    /// given).
    pub fanout_prefix: String,
    /// Whether a fanout channel ends in `/<routing key>` when there is
    /// one (`fanout_patterns`, default `true`).
    pub fanout_patterns: bool,
}

impl Default for RedisKeys {
    fn default() -> Self {
        RedisKeys {
            global_keyprefix: String::new(),
            sep: DEFAULT_SEP.to_owned(),
            priority_steps: DEFAULT_PRIORITY_STEPS.to_vec(),
            unacked_key: "unacked".to_owned(),
            unacked_index_key: "unacked_index".to_owned(),
            unacked_mutex_key: "unacked_mutex".to_owned(),
            fanout_prefix: "/{db}.".to_owned(),
            fanout_patterns: true,
        }
    }
}

impl RedisKeys {
    /// Why these names cannot be used, if they cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.sep.is_empty() {
            return Some("sep must not be empty");
        }
        if self.priority_steps.is_empty() {
            return Some("priority_steps must name at least one step");
        }
        if self.priority_steps.windows(2).any(|w| w[0] >= w[1]) {
            return Some("priority_steps must be strictly increasing");
        }
        if [
            &self.unacked_key,
            &self.unacked_index_key,
            &self.unacked_mutex_key,
        ]
        .iter()
        .any(|k| k.is_empty())
        {
            return Some("unacked_key, unacked_index_key and unacked_mutex_key must not be empty");
        }
        None
    }
}
