//! Starting and stopping the node's background work: the mailbox, the
//! heartbeat and the autoscaler.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::node::Node;

/// The running mailbox, heartbeat and autoscaler of a node.
#[derive(Debug)]
pub(crate) struct Service {
    node: Arc<Node>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Service {
    /// Starts them; returns once the mailbox listens (or could not
    /// subscribe, which is logged and retried in the background), so
    /// control commands sent after the worker says it is ready are seen.
    pub(crate) async fn start(node: &Arc<Node>) -> Service {
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tasks = vec![
            tokio::spawn(super::mailbox::run(Arc::clone(node), tx, stop.clone())),
            tokio::spawn(crate::events::heartbeat::run(
                Arc::clone(node),
                stop.clone(),
            )),
            tokio::spawn(autoscale(Arc::clone(node), stop.clone())),
        ];
        let _ = rx.await;
        Service {
            node: Arc::clone(node),
            stop,
            tasks,
        }
    }

    /// Stops them and sends `worker-offline`.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        crate::events::heartbeat::offline(&self.node).await;
        self.node.wire.close().await;
    }
}

/// Runs the autoscaler of `node` until `stop` (here rather than in
/// `autoscale.rs`, which holds only its arithmetic and never sees the node).
async fn autoscale(node: Arc<Node>, stop: CancellationToken) {
    let Some(scaler) = &node.autoscaler else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(super::autoscale::INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        let limit = node.pool.limit();
        let target = scaler.target(node.requests.len(), limit, tokio::time::Instant::now());
        if target > limit {
            match node.pool.grow(target - limit) {
                Ok(n) => tracing::info!("autoscaler: pool grown to {n}"),
                Err(e) => tracing::warn!("autoscaler: cannot grow: {e}"),
            }
        } else if target < limit {
            match node.pool.shrink(limit - target) {
                Ok(n) => tracing::info!("autoscaler: pool shrunk to {n}"),
                Err(e) => tracing::warn!("autoscaler: cannot shrink: {e}"),
            }
        }
    }
}
