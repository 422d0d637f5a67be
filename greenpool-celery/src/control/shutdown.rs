//! `shutdown`: a warm shutdown, with no reply (Celery's raises
//! `WorkerShutdown` before answering).

use std::sync::Arc;

use super::node::Node;
use super::table::{Answer, Args};

/// `shutdown`: logs `msg` and starts the warm shutdown.
pub(crate) fn shutdown(node: &Arc<Node>, args: &Args<'_>) -> Answer {
    let msg = args.str("msg").unwrap_or("Got shutdown from remote");
    tracing::warn!("{msg}");
    node.shutdown.cancel();
    Ok(None)
}
