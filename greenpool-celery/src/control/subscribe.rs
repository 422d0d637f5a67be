//! The one place the mailbox gets a subscribed connection from: open a
//! pub/sub connection and PSUBSCRIBE. When it drops, the mailbox calls
//! this again (with a pause), so a Redis restart costs the commands sent
//! while it was away, as with kombu.

use std::pin::Pin;

use futures::{Stream, StreamExt};

use crate::error::BrokerError;

/// Messages of a subscription: the payload of each PUBLISH.
pub(crate) type Messages = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// A connection to `client`'s server subscribed to `pattern`
/// (PSUBSCRIBE), as a stream of payloads that ends when the connection
/// does.
pub(crate) async fn psubscribe(
    client: &redis::Client,
    pattern: &str,
) -> Result<Messages, BrokerError> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(BrokerError::Connect)?;
    pubsub
        .psubscribe(pattern)
        .await
        .map_err(BrokerError::Redis)?;
    Ok(Box::pin(pubsub.into_on_message().filter_map(
        |m| async move {
            match m.get_payload::<Vec<u8>>() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("control: unreadable pub/sub payload: {e}");
                    None
                }
            }
        },
    )))
}
