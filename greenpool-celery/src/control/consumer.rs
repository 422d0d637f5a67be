//! `add_consumer` and `cancel_consumer`.
//!
//! The worker's consumer reads a fixed set of queues chosen at start
//! (`-Q`); changing it while running is not offered yet, so both
//! commands answer with an error naming the way to do it, instead of a
//! success that would not hold.

use std::sync::Arc;

use super::node::Node;
use super::table::{Answer, Args};

fn refuse(what: &str, queue: &str) -> Answer {
    Err(format!(
        "NotImplementedError('{what} {queue}: the queues of a greenpool worker are fixed at start; restart it with -Q')"
    ))
}

/// `add_consumer`: refused, see the module docs.
pub(crate) fn add_consumer(_: &Arc<Node>, args: &Args<'_>) -> Answer {
    refuse("add consumer", args.str("queue").unwrap_or_default())
}

/// `cancel_consumer`: refused, see the module docs.
pub(crate) fn cancel_consumer(_: &Arc<Node>, args: &Args<'_>) -> Answer {
    refuse("cancel consumer", args.str("queue").unwrap_or_default())
}
