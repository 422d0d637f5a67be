//! Step 1: the delivery read into a [`TaskMessage`], its task looked up
//! and its time limits checked. A message that can never run (unreadable,
//! without a delivery tag, of an unregistered task, with an unusable time
//! limit) is failed here: logged once, FAILURE stored when it names a
//! task id, acked.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::traceback::traceback_text;
use crate::backend::TaskState;
use crate::broker::{Delivery, Received};
use crate::error::ProtocolError;
use crate::protocol::{Rejected, TaskMessage};
use crate::registry::RegisteredTask;
use crate::repr::{cut, cut_bytes, LOG_NAME_MAX, LOG_REPR_MAX};
use crate::task_error::TaskError;
use crate::worker::Shared;

/// Most bytes of an undecodable queue entry shown in a log line.
const LOG_RAW_MAX: usize = 200;

/// The time limits a request runs with (worker config, control command
/// and message header merged).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The hard limit: the job is killed past it.
    pub(super) hard: Option<Duration>,
    /// The soft limit: the task is asked to stop past it.
    pub(super) soft: Option<Duration>,
    /// The hard limit in seconds as given, reported when it kills the job.
    pub(super) hard_secs: Option<f64>,
}

/// A decoded request of a registered task, with usable limits.
pub(super) struct Decoded {
    /// The message.
    pub(super) msg: TaskMessage,
    /// Its delivery tag (held in the worker's outstanding set).
    pub(super) tag: String,
    /// The queue it came from.
    pub(super) queue: String,
    /// The message as received.
    pub(super) message: Received,
    /// The task id, shared by the context, the listing and the callbacks.
    pub(super) id: Arc<str>,
    /// The task name, shared as the id is.
    pub(super) name: Arc<str>,
    /// The registered task.
    pub(super) task: RegisteredTask,
    /// The limits in force.
    pub(super) limits: Limits,
}

/// Decodes `delivery`; `None` when it was failed here (or carries no
/// delivery tag).
pub(super) fn decode(shared: &Shared, delivery: Delivery) -> Option<Decoded> {
    let Delivery {
        queue,
        message,
        tag,
        parsed,
    } = delivery;
    if let Some(tag) = &tag {
        shared
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tag.clone());
    }
    let decoded = match parsed {
        Ok(wire) => TaskMessage::from_wire(wire, message.span_base()),
        Err(error) => Err(Rejected {
            error,
            partial: None,
        }),
    };
    let (msg, tag) = match (decoded, tag) {
        (Ok(m), Some(tag)) => (m, tag),
        (Ok(m), None) => {
            let why = TaskError::new("DecodeError", "the message has no delivery tag")
                .with_module("kombu.exceptions");
            let rejected = Rejected {
                error: ProtocolError::MissingHeader("delivery_tag"),
                partial: Some(Box::new(m)),
            };
            reject(shared, &queue, &message, None, rejected, why);
            return None;
        }
        (Err(r), tag) => {
            let why =
                TaskError::new("DecodeError", r.error.to_string()).with_module("kombu.exceptions");
            reject(shared, &queue, &message, tag.as_deref(), r, why);
            return None;
        }
    };
    let id: Arc<str> = Arc::from(msg.headers.id.as_str());
    let name: Arc<str> = Arc::from(msg.headers.task.as_str());
    let Some(task) = shared.control.registry.get(&name).cloned() else {
        tracing::error!(
            "Received unregistered task of type '{}'. The message has been ignored and discarded.",
            cut(&name, LOG_NAME_MAX)
        );
        shared.control.recorder.unrunnable();
        let err = TaskError::new("NotRegistered", &*name).with_module("celery.exceptions");
        if !msg.headers.ignore_result {
            shared.store(&msg, TaskState::Failure, err.to_json(), None);
        }
        shared.ack(&tag);
        return None;
    };
    // Numbers that cannot be used fail the request before it waits for
    // anything, as a message that can never run.
    let timelimit = crate::control::hooks::time_limits(shared, &name, msg.headers.timelimit);
    let limits = match (timelimit.hard_duration(), timelimit.soft_duration()) {
        (Ok(hard), Ok(soft)) => Limits {
            hard,
            soft,
            hard_secs: timelimit.hard,
        },
        (Err(e), _) | (_, Err(e)) => {
            let err = TaskError::value_error(e.to_string());
            fail_before_run(shared, &msg, &tag, err);
            return None;
        }
    };
    Some(Decoded {
        msg,
        tag,
        queue,
        message,
        id,
        name,
        task,
        limits,
    })
}

/// A message that cannot be run: logged once with its reason, FAILURE
/// stored under its task id when it names one (so that a client waiting
/// in `AsyncResult.get()` gets the reason), and acked.
fn reject(
    shared: &Shared,
    queue: &str,
    message: &Received,
    tag: Option<&str>,
    rejected: Rejected,
    why: TaskError,
) {
    let Rejected { error, partial } = rejected;
    let raw = message.text();
    let raw = raw.as_bytes();
    match &partial {
        Some(m) => tracing::error!(
            "Can't decode message body of task {}[{}] from queue {}: {error}; \
             the message has been failed and discarded: {}",
            cut(&m.headers.task, LOG_NAME_MAX),
            cut(&m.headers.id, LOG_NAME_MAX),
            cut(queue, LOG_NAME_MAX),
            cut_bytes(raw, LOG_RAW_MAX),
        ),
        None => tracing::error!(
            "Can't decode message body from queue {}: {error}; \
             the message has been discarded: {}",
            cut(queue, LOG_NAME_MAX),
            cut_bytes(raw, LOG_RAW_MAX),
        ),
    }
    if let Some(m) = partial.filter(|m| !m.headers.ignore_result) {
        let tb = traceback_text(m.headers.display_name(), &why);
        shared.store(&m, TaskState::Failure, why.to_json(), Some(tb));
    }
    if let Some(tag) = tag {
        shared.ack(tag);
    }
}

/// Fails a decoded request that cannot run (an unusable time limit):
/// logged, FAILURE stored, acked.
fn fail_before_run(shared: &Shared, msg: &TaskMessage, tag: &str, err: TaskError) {
    shared.control.recorder.unrunnable();
    let name = cut(msg.headers.display_name(), LOG_NAME_MAX);
    tracing::error!(
        "Task {name}[{}] cannot run: {}",
        cut(&msg.headers.id, LOG_NAME_MAX),
        cut(&err.to_string(), LOG_REPR_MAX)
    );
    if !msg.headers.ignore_result {
        let tb = traceback_text(&name, &err);
        shared.store(msg, TaskState::Failure, err.to_json(), Some(tb));
    }
    shared.ack(tag);
}
