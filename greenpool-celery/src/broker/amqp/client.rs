//! The client side on AMQP: publish task messages (confirmed) to the
//! default exchange with the queue name as routing key, declaring each
//! queue as Celery does before its first use; and, for the rpc:// backend,
//! one exclusive auto-delete reply queue per client whose messages are
//! matched to tasks by `correlation_id`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;

use super::session::{Live, Session, Topology};
use super::wire::Outgoing;
use crate::backend::ResultMeta;
use crate::conn::LinkSettings;
use crate::error::BrokerError;

/// Replies received on the client's reply queue, by task id.
type Inbox = Arc<Mutex<HashMap<String, watch::Sender<Option<ResultMeta>>>>>;

/// A client's AMQP connection.
#[derive(Debug)]
pub(crate) struct AmqpClient {
    session: Arc<Session>,
    declared: Mutex<HashSet<String>>,
    /// The rpc:// reply queue's name, when results are read that way.
    reply_to: Option<String>,
    inbox: Inbox,
}

impl AmqpClient {
    /// Connects; with `rpc`, also declares a reply queue and consumes it.
    pub(crate) async fn connect(
        url: &str,
        settings: LinkSettings,
        rpc: bool,
    ) -> Result<Self, BrokerError> {
        let session = Session::new("broker", url, settings, Topology::default())?;
        let live = session.connect(true).await?;
        let inbox: Inbox = Arc::default();
        let reply_to = if rpc {
            let name = crate::uuid::uuid4();
            consume_replies(&live, &name, Arc::clone(&inbox)).await?;
            Some(name)
        } else {
            None
        };
        Ok(AmqpClient {
            session,
            declared: Mutex::new(HashSet::new()),
            reply_to,
            inbox,
        })
    }

    /// The reply queue results come back on (rpc://).
    pub(crate) fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_deref()
    }

    async fn live(&self) -> Result<Arc<Live>, BrokerError> {
        match self.session.current() {
            Some(l) => Ok(l),
            None => {
                self.declared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                let live = self.session.connect(false).await?;
                // The exclusive reply queue went with the old connection:
                // declare it again under the same name, which the tasks
                // sent before carry as their reply_to (replies published
                // while it was gone are lost, as with Celery's rpc://).
                if let Some(name) = &self.reply_to {
                    consume_replies(&live, name, Arc::clone(&self.inbox)).await?;
                }
                Ok(live)
            }
        }
    }

    /// Publishes `m` to `queue` and waits for the broker's confirm.
    pub(crate) async fn publish(&self, queue: &str, m: Outgoing) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let fresh = !self
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(queue);
        if fresh {
            self.ensure_queue(&live, queue).await?;
            self.declared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(queue.to_owned());
        }
        let confirm = live
            .publish
            .basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                m.properties,
            )
            .await
            .map_err(BrokerError::Amqp)?
            .await
            .map_err(BrokerError::Amqp)?;
        if confirm.is_nack() {
            return Err(BrokerError::GaveUp(format!(
                "the broker refused (nacked) the message to {queue:?}"
            )));
        }
        Ok(())
    }

    /// Makes sure `queue` exists before the first publish to it: a queue
    /// that exists is used as it is (whatever arguments the workers
    /// declared it with, `x-max-priority` or quorum: declaring it again
    /// without them would be the broker's 406), a missing one is declared
    /// as Celery's client declares it. The passive check runs on a channel
    /// of its own, which the broker closes when the queue is missing.
    async fn ensure_queue(&self, live: &Live, queue: &str) -> Result<(), BrokerError> {
        let probe = live
            .conn
            .create_channel()
            .await
            .map_err(BrokerError::Amqp)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match probe
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = probe.close(200, "queue exists".into()).await;
                Ok(())
            }
            Err(e) if is_not_found(&e) => self.session.declare_queue(&live.publish, queue).await,
            Err(e) => Err(BrokerError::Amqp(e)),
        }
    }

    /// A receiver of the replies for task `id` (the latest one).
    pub(crate) fn watch(&self, id: &str) -> watch::Receiver<Option<ResultMeta>> {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }
}

/// Whether `e` is the server's 404 NOT_FOUND.
fn is_not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// Declares the exclusive auto-delete reply queue `name` (a UUID, as
/// kombu names its oid queues) and routes its messages into `inbox`.
async fn consume_replies(live: &Live, name: &str, inbox: Inbox) -> Result<(), BrokerError> {
    live.consume
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Amqp)?;
    let mut consumer = live
        .consume
        .basic_consume(
            name.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Amqp)?;
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let meta: ResultMeta = match serde_json::from_slice(&d.data) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("dropping a reply that is not a result meta: {e}");
                    continue;
                }
            };
            let id = d
                .properties
                .correlation_id()
                .as_ref()
                .map_or_else(|| meta.task_id.clone(), |c| c.as_str().to_owned());
            inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id)
                .or_insert_with(|| watch::channel(None).0)
                .send_replace(Some(meta));
        }
        tracing::debug!("rpc reply consumer ended");
    });
    Ok(())
}
