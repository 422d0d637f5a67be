//! The mailbox: listen on `/{db}.celery.pidbox`, run the requests meant
//! for this node, answer those that want an answer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::message::ControlRequest;
use super::node::Node;
use super::{envelope, reply, table};
use crate::conn::{Subscriber, SubscriberEvent};

/// kombu's broadcast exchange of Celery's mailbox.
pub(crate) const EXCHANGE: &str = "celery.pidbox";

/// Pause before trying again when the first subscription failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Listens until `stop`, through the connection layer's reconnecting
/// [`Subscriber`] (commands published while the connection is down are
/// lost, as with kombu). `subscribed` fires once the subscription is in
/// place (or is dropped when the first attempt failed).
pub(crate) async fn run(node: Arc<Node>, subscribed: oneshot::Sender<()>, stop: CancellationToken) {
    let topic = envelope::fanout_topic(node.db, EXCHANGE, "");
    let mut subscribed = Some(subscribed);
    let mut sub = loop {
        let opened = tokio::select! {
            r = Subscriber::subscribe(&node.link, Vec::new(), vec![topic.clone()]) => r,
            _ = stop.cancelled() => return,
        };
        match opened {
            Ok(s) => break s,
            Err(e) => {
                subscribed = None;
                tracing::error!("control: cannot subscribe to {topic}: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    tracing::debug!("control: listening on {topic}");
    if let Some(tx) = subscribed.take() {
        let _ = tx.send(());
    }
    loop {
        let next = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled() => return,
        };
        match next {
            Ok(SubscriberEvent::Message(msg)) => match msg.get_payload::<Vec<u8>>() {
                Ok(raw) => handle(&node, &raw).await,
                Err(e) => tracing::warn!("control: unreadable pub/sub payload: {e}"),
            },
            Ok(SubscriberEvent::Resubscribed) => {
                tracing::info!("control: listening on {topic} again");
            }
            Err(e) => {
                tracing::error!("control: remote control stopped: {e}");
                return;
            }
        }
    }
}

/// Handles one published message.
async fn handle(node: &Arc<Node>, raw: &[u8]) {
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
        &node.link,
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
