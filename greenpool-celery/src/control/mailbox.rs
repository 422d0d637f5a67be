//! The mailbox: listen on `/{db}.celery.pidbox`, run the requests meant
//! for this node, answer those that want an answer.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::message::ControlRequest;
use super::node::Node;
use super::{envelope, reply, subscribe, table};

/// kombu's broadcast exchange of Celery's mailbox.
pub(crate) const EXCHANGE: &str = "celery.pidbox";

/// Pause before subscribing again after the connection dropped.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Listens until `stop`. `subscribed` fires once the first subscription
/// is in place (or is dropped when it could not be made).
pub(crate) async fn run(node: Arc<Node>, subscribed: oneshot::Sender<()>, stop: CancellationToken) {
    let topic = envelope::fanout_topic(node.db, EXCHANGE, "");
    let mut subscribed = Some(subscribed);
    let mut conn = node.conn.clone();
    loop {
        let opened = tokio::select! {
            r = subscribe::psubscribe(&node.broker, &topic) => r,
            _ = stop.cancelled() => return,
        };
        match opened {
            Ok(mut messages) => {
                tracing::debug!("control: listening on {topic}");
                if let Some(tx) = subscribed.take() {
                    let _ = tx.send(());
                }
                loop {
                    let next = tokio::select! {
                        m = messages.next() => m,
                        _ = stop.cancelled() => return,
                    };
                    let Some(raw) = next else {
                        tracing::warn!("control: lost the pub/sub connection; subscribing again");
                        break;
                    };
                    handle(&node, &mut conn, &raw).await;
                }
            }
            Err(e) => {
                subscribed = None;
                tracing::error!("control: cannot subscribe to {topic}: {e}; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Handles one published message.
async fn handle(node: &Arc<Node>, conn: &mut redis::aio::MultiplexedConnection, raw: &[u8]) {
    let (req, clock) = match ControlRequest::decode(raw) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("control: cannot decode a pidbox message: {e}");
            return;
        }
    };
    node.clock.adjust(clock);
    if !req.is_for(&node.hostname) {
        return;
    }
    let args = req.arguments.clone().unwrap_or_default();
    tracing::debug!("pidbox received method {}({args:?})", req.method);
    let answer = match table::dispatch(node, &req.method, &args) {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(repr) => {
            tracing::error!("pidbox command error: {repr}");
            json!({"error": repr})
        }
    };
    let Some(to) = &req.reply_to else { return };
    let clock = node.clock.forward();
    if let Err(e) = reply::send(
        conn,
        to,
        req.ticket.as_deref(),
        clock,
        &node.hostname,
        answer,
    )
    .await
    {
        tracing::warn!("control: cannot reply to {}: {e}", req.method);
    }
}
