//! The mailbox: listen on `celery.pidbox` (on Redis `/{db}.celery.pidbox`,
//! on AMQP the node's own queue), run the requests meant for this node,
//! answer those that want an answer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::message::ControlRequest;
use super::node::Node;
use super::table;
use super::wire::NodeWire;
#[cfg(feature = "redis")]
use crate::conn::{Link, Subscriber, SubscriberEvent};

/// kombu's broadcast exchange of Celery's mailbox.
pub(crate) const EXCHANGE: &str = "celery.pidbox";

/// Pause before trying again when the first subscription failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Listens until `stop`. `subscribed` fires once the node listens (or is
/// dropped when the first attempt failed).
pub(crate) async fn run(node: Arc<Node>, subscribed: oneshot::Sender<()>, stop: CancellationToken) {
    match node.wire.clone() {
        #[cfg(feature = "redis")]
        NodeWire::Redis { link, db } => run_redis(node, &link, db, subscribed, stop).await,
        #[cfg(feature = "amqp")]
        NodeWire::Amqp(link) => run_amqp(node, &link, subscribed, stop).await,
    }
}

/// On Redis, through the connection layer's reconnecting [`Subscriber`]
/// (commands published while the connection is down are lost, as with
/// kombu).
#[cfg(feature = "redis")]
async fn run_redis(
    node: Arc<Node>,
    link: &Arc<Link>,
    db: i64,
    subscribed: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let topic = link.settings().keys.fanout_topic(db, EXCHANGE, "");
    let mut subscribed = Some(subscribed);
    let mut sub = loop {
        let opened = tokio::select! {
            r = Subscriber::subscribe(link, Vec::new(), vec![topic.clone()]) => r,
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
                Ok(raw) => match ControlRequest::decode(&raw) {
                    Ok((req, clock)) => handle(&node, req, clock).await,
                    Err(e) => tracing::error!("control: cannot decode a pidbox message: {e}"),
                },
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

/// On AMQP, consuming the node's queue; a broken connection is reopened
/// and the queue declared and consumed again (requests published while
/// no queue exists are lost, as with kombu).
#[cfg(feature = "amqp")]
async fn run_amqp(
    node: Arc<Node>,
    link: &crate::broker::amqp::node_link::AmqpNodeLink,
    subscribed: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    use crate::broker::amqp::node_link::{clock_header, is_refusal};
    use futures::StreamExt;

    let queue = format!("{}.{EXCHANGE}", node.hostname);
    let mut subscribed = Some(subscribed);
    let mut listened = false;
    let mut last_failure: Option<String> = None;
    loop {
        let opened = tokio::select! {
            r = link.listen(&queue) => r,
            _ = stop.cancelled() => return,
        };
        let mut consumer = match opened {
            Ok(c) => c,
            Err(e) if is_refusal(&e) => {
                tracing::error!("control: remote control is off: {e}");
                return;
            }
            Err(e) => {
                subscribed = None;
                // Logged once per kind of failure: a second node of the same
                // name holds the exclusive queue for as long as it runs.
                let why = e.to_string();
                if last_failure.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        "control: cannot listen on {queue}: {why}; retrying every second"
                    );
                    last_failure = Some(why);
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
        };
        last_failure = None;
        if listened {
            tracing::info!("control: listening on {queue} again");
        } else {
            tracing::debug!("control: listening on {queue}");
            listened = true;
        }
        if let Some(tx) = subscribed.take() {
            let _ = tx.send(());
        }
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                _ = stop.cancelled() => return,
            };
            match next {
                Some(Ok(d)) => match serde_json::from_slice::<ControlRequest>(&d.data) {
                    Ok(req) => handle(&node, req, clock_header(&d)).await,
                    Err(e) => tracing::error!("control: cannot decode a pidbox message: {e}"),
                },
                Some(Err(e)) => {
                    tracing::warn!("control: connection lost: {e}; listening again");
                    break;
                }
                None => {
                    tracing::warn!(
                        "control: the broker cancelled the mailbox consumer; listening again"
                    );
                    break;
                }
            }
        }
    }
}

/// Handles one request.
async fn handle(node: &Arc<Node>, req: ControlRequest, clock: u64) {
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
    if let Err(e) = node
        .wire
        .reply(to, req.ticket.as_deref(), clock, &node.hostname, answer)
        .await
    {
        tracing::warn!("control: cannot reply to {}: {e}", req.method);
    }
}
