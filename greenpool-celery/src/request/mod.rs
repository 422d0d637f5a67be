//! One request's path, a file per step in the order a request goes:
//!
//! 1. [`decode`]: the delivery read into a message, its task looked up,
//!    its time limits (worker config, control command, header) checked.
//!    A message that can never run is failed and acked there.
//! 2. [`expiry`]: a request past its `expires` is discarded as REVOKED;
//!    a revoked id is discarded by `control::hooks::received`. Both are
//!    checked again after the ETA and when the job starts.
//! 3. [`eta`]: a request with an ETA waits on the pool's timer (its
//!    prefetch permit given up meanwhile).
//! 4. Rate limit: `control::hooks::before_apply` waits for a token.
//! 5. [`admit`]: the pool job: the task's context, the accept callback
//!    (listed active, STARTED, early ack) and the outcome callback.
//! 6. Run: the job's target calls the task.
//! 7. [`outcome`]: the job's outcome decided, purely, into a `Decision`:
//!    the state and every write it needs.
//! 8. [`settle`]: the one place that applies a decision: log line,
//!    follow-ups ([`follow_up`], [`retry`]), the decision's counter and
//!    event handed to the node's recorder (`control/recorder.rs`) in one
//!    call, the result store, then the requeue or the ack.
//!
//! No step counts by itself: every count (the report's, `processed`,
//! `stats.total`, the metrics, the task events) is a call to the
//! recorder.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::broker::{Delivery, Received};
use crate::control::hooks::{self, Listed};
use crate::protocol::TaskMessage;
use crate::registry::RegisteredTask;
use crate::repr::{cut, LOG_NAME_MAX};
use crate::worker::Shared;

mod admit;
mod decode;
mod eta;
mod expiry;
mod follow_up;
mod outcome;
pub(crate) mod retry;
mod settle;
mod traceback;

/// A request received and listed, on its way to the pool.
struct Prepared {
    /// The message, boxed: the job's callbacks own it, and the job is
    /// moved several times before it runs.
    msg: Box<TaskMessage>,
    /// Its delivery tag.
    tag: String,
    /// The queue it came from.
    queue: String,
    /// The message as received, shared with the listing and the retry.
    received: Arc<Received>,
    /// The task id.
    id: Arc<str>,
    /// The task name.
    name: Arc<str>,
    /// The registered task.
    task: RegisteredTask,
    /// The time limits in force.
    limits: decode::Limits,
    /// Its entry in the listing of held requests.
    listed: Listed,
    /// Its prefetch permit (given up while it waits for an ETA).
    permit: Option<OwnedSemaphorePermit>,
}

/// Handles one delivery up to the point where the pool owns it.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    delivery: Delivery,
    permit: Option<OwnedSemaphorePermit>,
) {
    shared.control.recorder.delivered();
    let Some(d) = decode::decode(&shared, delivery) else {
        return;
    };
    tracing::info!(
        "Task {}[{}] received",
        cut(&d.name, LOG_NAME_MAX),
        cut(&d.id, LOG_NAME_MAX)
    );
    if expiry::revoke_if_expired(&shared, &d.msg, &d.tag) {
        return;
    }
    // Shared with the listing and the retry path (not copied).
    let received = Arc::new(d.message);
    let Some(listed) = hooks::received(&shared, &d.msg, &d.tag, &d.id, &received) else {
        return;
    };
    let mut req = Prepared {
        msg: Box::new(d.msg),
        tag: d.tag,
        queue: d.queue,
        received,
        id: d.id,
        name: d.name,
        task: d.task,
        limits: d.limits,
        listed,
        permit,
    };
    if !wait_for_eta(&shared, &mut req).await {
        return;
    }
    let name = Arc::clone(&req.name);
    let id = Arc::clone(&req.id);
    let job = admit::job(&shared, req);
    hooks::before_apply(&shared, &name).await;
    if let Err(e) = shared.control.pool.apply_async(job).await {
        // The pool closed (warm shutdown) while the request waited for a
        // slot: the message stays unacked and is given back.
        tracing::debug!(
            "Task {}[{}] not started: {e}",
            cut(&name, LOG_NAME_MAX),
            cut(&id, LOG_NAME_MAX)
        );
    }
}

/// Waits for the request's ETA, if one lies ahead (listed as scheduled
/// meanwhile, its prefetch permit given up as Celery raises the prefetch
/// budget). False when the request is done with: warm shutdown came
/// first (left unacked, given back at the end), or it expired or was
/// revoked meanwhile.
async fn wait_for_eta(shared: &Shared, req: &mut Prepared) -> bool {
    let Some(at) = req.msg.headers.eta.filter(|e| !e.is_past()) else {
        return true;
    };
    drop(req.permit.take());
    hooks::scheduled(shared, &req.listed, true);
    if !eta::wait_for_eta(shared, at).await {
        return false;
    }
    hooks::scheduled(shared, &req.listed, false);
    !expiry::revoke_if_expired(shared, &req.msg, &req.tag)
        && hooks::still_wanted(shared, &req.msg, &req.tag)
}
