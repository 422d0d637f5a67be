//! One request's path: decode, expiry, ETA, the pool job, and its outcome
//! (result stored, follow-up tasks sent, ack).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use greenpool::{Job, JobContext, Outcome, TerminateReason};
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::backend::TaskState;
use crate::broker::Delivery;
use crate::context::TaskContext;
use crate::error::ProtocolError;
use crate::protocol::{kombu_priority, Rejected, TaskMessage, Timestamp};
use crate::repr::{cut, cut_bytes, LOG_NAME_MAX, LOG_REPR_MAX};
use crate::seconds::{duration_from_secs, MAX_DURATION};
use crate::task_error::TaskError;
use crate::worker::{bump, Shared};

/// Handles one delivery up to the point where the pool owns it.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    delivery: Delivery,
    permit: Option<OwnedSemaphorePermit>,
) {
    bump(&shared.counters.received);
    let Delivery {
        queue,
        raw,
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
        Ok(wire) => TaskMessage::from_wire(wire, raw.as_bytes()),
        Err(error) => Err(Rejected {
            error,
            partial: None,
        }),
    };
    let msg = match (decoded, &tag) {
        (Ok(m), Some(_)) => m,
        (Ok(m), None) => {
            let why = TaskError::new("DecodeError", "the message has no delivery tag")
                .with_module("kombu.exceptions");
            let rejected = Rejected {
                error: ProtocolError::MissingHeader("delivery_tag"),
                partial: Some(Box::new(m)),
            };
            reject(&shared, &queue, raw.as_bytes(), None, rejected, why);
            return;
        }
        (Err(r), tag) => {
            let why =
                TaskError::new("DecodeError", r.error.to_string()).with_module("kombu.exceptions");
            reject(&shared, &queue, raw.as_bytes(), tag.as_deref(), r, why);
            return;
        }
    };
    let Some(tag) = tag else { return };
    // Id and name are shared (not copied) by the context, the listing and
    // the callbacks; log lines show them cut.
    let id: Arc<str> = Arc::from(msg.headers.id.as_str());
    let name: Arc<str> = Arc::from(msg.headers.task.as_str());
    let Some(task) = shared.registry.get(&name).cloned() else {
        tracing::error!(
            "Received unregistered task of type '{}'. The message has been ignored and discarded.",
            cut(&name, LOG_NAME_MAX)
        );
        bump(&shared.counters.failed);
        let err = TaskError::new("NotRegistered", &*name).with_module("celery.exceptions");
        if !msg.headers.ignore_result {
            shared.store(&msg, TaskState::Failure, err.to_json(), None);
        }
        shared.ack(&tag);
        return;
    };
    // Numbers that cannot be used fail the request before it waits for
    // anything, as a message that can never run.
    let timelimit = crate::control::hooks::time_limits(&shared, &name, msg.headers.timelimit);
    let limits = match (timelimit.hard_duration(), timelimit.soft_duration()) {
        (Ok(hard), Ok(soft)) => (hard, soft),
        (Err(e), _) | (_, Err(e)) => {
            let err = TaskError::value_error(e.to_string());
            fail_before_run(&shared, &msg, &tag, err);
            return;
        }
    };
    tracing::info!(
        "Task {}[{}] received",
        cut(&name, LOG_NAME_MAX),
        cut(&id, LOG_NAME_MAX)
    );
    if revoke_if_expired(&shared, &msg, &tag) {
        return;
    }
    // Shared with the listing and the retry path (the text is not copied).
    let raw = Arc::new(raw);
    let Some(listed) = crate::control::hooks::received(&shared, &msg, &tag, &id, &raw) else {
        return;
    };
    let mut permit = permit;
    if let Some(eta) = msg.headers.eta.filter(|e| !e.is_past()) {
        // Celery raises the prefetch budget while an ETA request waits.
        drop(permit.take());
        crate::control::hooks::scheduled(&shared, &listed, true);
        if !wait_for_eta(&shared, eta).await {
            // Warm shutdown: left unacked, given back at the end.
            return;
        }
        crate::control::hooks::scheduled(&shared, &listed, false);
        if revoke_if_expired(&shared, &msg, &tag)
            || !crate::control::hooks::still_wanted(&shared, &msg, &tag)
        {
            return;
        }
    }
    let acks_late = task.options.acks_late.unwrap_or(shared.config.acks_late);
    let ignore_result = msg.headers.ignore_result || task.options.ignore_result;
    let span = crate::control::hooks::task_span(&msg, &queue);
    let (job_span, done_span) = (span.clone(), span);
    let expires = msg.headers.expires;
    // Boxed: the job's callbacks own it, and the job is moved several
    // times before it runs.
    let mut msg = Box::new(msg);
    // The job owns the arguments; a copy stays only for result_extended.
    let (args, kwargs) = if shared.config.result_extended {
        (msg.args.clone(), msg.kwargs.clone())
    } else {
        (
            std::mem::take(&mut msg.args),
            std::mem::take(&mut msg.kwargs),
        )
    };
    let retry = RetryInfo {
        raw,
        max_retries: task.options.max_retries,
        queue: queue.clone(),
    };
    // The context is made when the job starts, with the job's own token.
    let ctx = (
        Arc::clone(&id),
        Arc::clone(&name),
        msg.headers.retries,
        msg.headers.eta,
        msg.headers.parent_id.clone(),
        msg.headers.root_id.clone(),
        queue,
        Arc::clone(&shared.hostname),
    );
    // The tag goes to whichever side acks: the accept callback (early
    // ack) or the outcome callback (late ack).
    let (early_tag, late_tag) = if acks_late {
        (None, Some(tag))
    } else {
        (Some(tag), None)
    };
    let early_ack = early_tag.map(|tag| (Arc::clone(&shared), tag, permit.take()));
    let done = Arc::clone(&shared);
    let reply_to = msg.properties.reply_to.clone();
    let started_meta = (shared.config.track_started && !ignore_result).then(|| {
        let meta = shared.meta(
            &msg,
            TaskState::Started,
            json!({"pid": std::process::id(), "hostname": shared.config.hostname}),
            None,
        );
        (Arc::clone(&shared), meta)
    });
    let gate = Arc::clone(&shared);
    let listed = Arc::new(listed);
    let on_start = (
        Arc::clone(&shared),
        Arc::clone(&listed),
        Arc::clone(&name),
        Arc::clone(&id),
    );
    let job = Job::new(move |jctx: JobContext| {
        let (id, name, retries, eta, parent_id, root_id, queue, hostname) = ctx;
        let ctx = TaskContext {
            id,
            name,
            retries,
            eta,
            expires,
            parent_id,
            root_id,
            queue,
            hostname,
            token: jctx.token().clone(),
        };
        // Checked again now that the request has a slot: it may have
        // waited for one past its expiry, or been revoked meanwhile.
        let expired = expires.filter(|e| e.is_past());
        let revoked = crate::control::hooks::revoked_at_start(&gate.control, &ctx.id);
        let fut = (expired.is_none() && !revoked).then(|| task.call(ctx, args, kwargs));
        async move {
            match (fut, expired) {
                (Some(fut), _) => {
                    let t0 = Instant::now();
                    let r = fut.await;
                    TaskOutput::Ran(r, t0.elapsed())
                }
                (None, None) => crate::control::hooks::revoked_output(),
                (None, at) => TaskOutput::Expired(at),
            }
        }
        .instrument(job_span)
    });
    // The job's name and arguments are only read by the pool's apply
    // signal: made for it when it has receivers.
    let job = if greenpool::signals::APPLY.has_receivers() {
        job.name(cut(&name, LOG_NAME_MAX).into_owned()).args_repr(
            cut(
                msg.headers.argsrepr.as_deref().unwrap_or_default(),
                LOG_REPR_MAX,
            )
            .into_owned(),
        )
    } else {
        job
    };
    let job = job
        .accept_callback(move |job_id, _| {
            let (s, l, n, i) = on_start;
            crate::control::hooks::started(&s.control, &l, job_id, &n, &i);
            tracing::debug!(
                "Task {}[{}] started",
                cut(&n, LOG_NAME_MAX),
                cut(&i, LOG_NAME_MAX)
            );
            if let Some((shared, meta)) = started_meta {
                if let Some(backend) = &shared.backend {
                    backend.store(&meta, reply_to.as_deref());
                }
            }
            if let Some((shared, tag, permit)) = early_ack {
                shared.ack(&tag);
                drop(permit);
            }
        })
        .callback(move |outcome: &Outcome<TaskOutput>| {
            let _in_task = done_span.enter();
            let unacked = late_tag.as_deref();
            let settled = finish(&done, &msg, outcome, ignore_result, &retry, unacked);
            if let (Some(tag), false) = (&late_tag, settled) {
                done.ack(tag);
            }
            drop(permit);
            drop(listed);
        });
    let (hard, soft) = limits;
    let job = match hard {
        Some(hard) => job.timeout(hard),
        None => job,
    };
    let job = match soft {
        Some(soft) => job.soft_timeout(soft),
        None => job,
    };
    crate::control::hooks::before_apply(&shared, &name).await;
    if let Err(e) = shared.pool.apply_async(job).await {
        // The pool closed (warm shutdown) while the request waited for a
        // slot: the message stays unacked and is given back.
        tracing::debug!(
            "Task {}[{}] not started: {e}",
            cut(&name, LOG_NAME_MAX),
            cut(&id, LOG_NAME_MAX)
        );
    }
}

/// A message that cannot be run: logged once with its reason, FAILURE
/// stored under its task id when it names one (so that a client waiting
/// in `AsyncResult.get()` gets the reason), and acked.
fn reject(
    shared: &Shared,
    queue: &str,
    raw: &[u8],
    tag: Option<&str>,
    rejected: Rejected,
    why: TaskError,
) {
    let Rejected { error, partial } = rejected;
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
    bump(&shared.counters.failed);
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

/// Most bytes of an undecodable queue entry shown in a log line.
const LOG_RAW_MAX: usize = 200;

/// Waits on the pool's green timer until `eta` (priority 6, as Celery
/// enters ETA requests). Returns false when warm shutdown came first.
///
/// An ETA may lie centuries ahead; each timer entry is at most
/// [`MAX_DURATION`] away, so that no clock sum can overflow, and the wait
/// goes on until the ETA has passed.
async fn wait_for_eta(shared: &Shared, eta: Timestamp) -> bool {
    let longest = MAX_DURATION;
    while !eta.is_past() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tx = Mutex::new(Some(tx));
        let now = tokio::time::Instant::now();
        let Some(at) = now.checked_add(eta.remaining().min(longest)) else {
            return false;
        };
        let fire = move || {
            if let Some(tx) = tx.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = tx.send(());
            }
        };
        match shared.timer.call_at(at, fire, 6) {
            Ok(tref) => {
                let fired = tokio::select! {
                    r = rx => r.is_ok(),
                    _ = shared.warm.cancelled() => {
                        let _ = shared.timer.cancel(&tref);
                        false
                    }
                };
                if !fired {
                    return false;
                }
            }
            Err(e) => {
                // Only after the timer stopped, i.e. during shutdown.
                tracing::debug!("ETA timer refused the entry: {e}");
                return false;
            }
        }
    }
    true
}

/// What a job returns: the task's result and how long it ran, or the
/// expiry it found passed when it got its slot.
pub(crate) enum TaskOutput {
    Ran(Result<Value, TaskError>, Duration),
    Expired(Option<Timestamp>),
}

/// Stores REVOKED ("expired") and acks when the request has expired.
fn revoke_if_expired(shared: &Shared, msg: &TaskMessage, tag: &str) -> bool {
    let Some(expires) = msg.headers.expires.filter(|e| e.is_past()) else {
        return false;
    };
    store_expired(shared, msg, expires);
    shared.ack(tag);
    true
}

/// Logs and stores REVOKED ("expired") for `msg`.
fn store_expired(shared: &Shared, msg: &TaskMessage, expires: Timestamp) {
    tracing::info!(
        "Discarding revoked task: {}[{}] (expired at {expires})",
        cut(&msg.headers.task, LOG_NAME_MAX),
        cut(&msg.headers.id, LOG_NAME_MAX)
    );
    crate::control::hooks::expired(shared, msg);
    bump(&shared.counters.revoked);
    if !msg.headers.ignore_result {
        let err = TaskError::new("TaskRevokedError", "expired").with_module("celery.exceptions");
        shared.store(msg, TaskState::Revoked, err.to_json(), None);
    }
}

/// Logs and stores a job's outcome. `unacked` is the delivery tag of a
/// late-ack request (its message not acked yet). Returns true when the
/// caller must not ack the message: it goes back to its queue (killed by
/// a cold shutdown), or it was settled here (rejected).
fn finish(
    shared: &Shared,
    msg: &TaskMessage,
    outcome: &Outcome<TaskOutput>,
    ignore_result: bool,
    retry: &RetryInfo,
    unacked: Option<&str>,
) -> bool {
    if crate::control::hooks::finish_revoked(shared, msg, outcome, ignore_result) {
        return false;
    }
    if let Outcome::Completed(TaskOutput::Ran(Err(e), _)) = outcome {
        if let Some(requeue) = e.reject_requeue() {
            reject_request(
                shared,
                msg,
                outcome,
                e,
                requeue,
                ignore_result,
                retry,
                unacked,
            );
            return true;
        }
    }
    let name = cut(msg.headers.display_name(), LOG_NAME_MAX);
    let name = name.as_ref();
    let id = cut(&msg.headers.id, LOG_NAME_MAX);
    let (state, result, traceback) = match outcome {
        Outcome::Completed(TaskOutput::Expired(at)) => {
            store_expired(shared, msg, at.unwrap_or_else(Timestamp::now));
            return false;
        }
        Outcome::Completed(TaskOutput::Ran(Err(e), _)) if e.retry_countdown().is_some() => {
            retry_or_fail(shared, msg, e, retry, unacked)
        }
        Outcome::Completed(TaskOutput::Ran(Ok(v), _)) => (TaskState::Success, v.clone(), None),
        Outcome::Completed(TaskOutput::Ran(Err(e), _)) => {
            bump(&shared.counters.failed);
            tracing::error!(
                "Task {name}[{id}] raised unexpected: {}",
                cut(&e.to_string(), LOG_REPR_MAX)
            );
            let tb = e
                .traceback()
                .map(str::to_owned)
                .unwrap_or_else(|| traceback_text(name, e));
            (TaskState::Failure, e.to_json(), Some(tb))
        }
        Outcome::Panicked(p) => {
            bump(&shared.counters.failed);
            let e = TaskError::runtime_error(format!("task panicked: {}", p.message()));
            tracing::error!(
                "Task {name}[{id}] raised unexpected: {}",
                cut(&format!("{e} ({p})"), LOG_REPR_MAX)
            );
            let mut tb = traceback_text(name, &e);
            let bt = p.backtrace_text();
            if !bt.is_empty() {
                tb = format!("{bt}\n{tb}");
            }
            (TaskState::Failure, e.to_json(), Some(tb))
        }
        Outcome::Terminated(t) => match t.reason {
            TerminateReason::TimeLimit => {
                bump(&shared.counters.failed);
                let secs = msg.headers.timelimit.hard.unwrap_or(0.0);
                let e = TaskError::new("TimeLimitExceeded", "")
                    .with_args(vec![json!(secs)])
                    .with_module("celery.exceptions");
                tracing::error!("Task {name}[{id}] hard time limit ({secs}s) exceeded");
                (
                    TaskState::Failure,
                    e.to_json(),
                    Some(traceback_text(name, &e)),
                )
            }
            TerminateReason::Killed => {
                bump(&shared.counters.revoked);
                let e = TaskError::new("TaskRevokedError", "terminated")
                    .with_module("celery.exceptions");
                tracing::warn!("Task {name}[{id}] terminated");
                (TaskState::Revoked, e.to_json(), None)
            }
            _ => {
                tracing::warn!("Task {name}[{id}] killed by shutdown: {t}");
                return true;
            }
        },
    };
    let (state, result, traceback) = match follow_up(shared, msg, state, &result, unacked) {
        Ok(()) => {
            if state == TaskState::Success {
                bump(&shared.counters.succeeded);
                if let Outcome::Completed(TaskOutput::Ran(_, runtime)) = outcome {
                    if tracing::enabled!(tracing::Level::INFO) {
                        tracing::info!(
                            "Task {name}[{id}] succeeded in {:.6}s: {}",
                            runtime.as_secs_f64(),
                            cut(&crate::repr::repr(&result), LOG_REPR_MAX)
                        );
                    }
                }
            }
            (state, result, traceback)
        }
        Err(e) => {
            // A follow-up that cannot be sent fails the task, as the
            // exception from Celery's apply_async would.
            bump(&shared.counters.failed);
            tracing::error!(
                "Task {name}[{id}] raised unexpected: {}",
                cut(&e.to_string(), LOG_REPR_MAX)
            );
            let tb = traceback_text(name, &e);
            (TaskState::Failure, e.to_json(), Some(tb))
        }
    };
    crate::control::hooks::finished(shared, msg, outcome, state, &result, traceback.as_deref());
    if !ignore_result {
        shared.store(msg, state, result, traceback);
    }
    false
}

/// A task asked for its message to be rejected (Celery's `Reject`), as
/// Celery's `Request.on_failure` handles it: without `requeue` the task
/// fails (FAILURE stored, `task-failed`); then a message still unacked
/// (late ack) is rejected, back at the end of its queue with `requeue` or
/// dropped without, and `task-rejected` is sent. A message acked at the
/// start cannot be rejected any more: no `task-rejected` then, as in
/// Celery, whose `reject` does nothing once the request is acknowledged.
#[allow(clippy::too_many_arguments)]
fn reject_request(
    shared: &Shared,
    msg: &TaskMessage,
    outcome: &Outcome<TaskOutput>,
    e: &TaskError,
    requeue: bool,
    ignore_result: bool,
    retry: &RetryInfo,
    unacked: Option<&str>,
) {
    let name = cut(msg.headers.display_name(), LOG_NAME_MAX);
    let id = cut(&msg.headers.id, LOG_NAME_MAX);
    tracing::info!(
        "Task {name}[{id}] rejected (requeue={requeue}): {}",
        cut(&e.to_string(), LOG_REPR_MAX)
    );
    if !requeue {
        bump(&shared.counters.failed);
        let tb = e
            .traceback()
            .map(str::to_owned)
            .unwrap_or_else(|| traceback_text(&name, e));
        let result = e.to_json();
        crate::control::hooks::finished(
            shared,
            msg,
            outcome,
            TaskState::Failure,
            &result,
            Some(&tb),
        );
        if !ignore_result {
            shared.store(msg, TaskState::Failure, result, Some(tb));
        }
    }
    let Some(tag) = unacked else { return };
    let again = requeue
        .then(|| requeue_envelope(retry.raw.as_bytes(), &retry.queue))
        .flatten();
    match again {
        Some((key, payload)) => shared.requeue(tag, key, payload),
        None => {
            if requeue {
                tracing::error!(
                    "Task {name}[{id}]: cannot requeue an unreadable message; it is dropped"
                );
            }
            shared.ack(tag);
        }
    }
    crate::control::hooks::rejected(shared, msg, requeue);
}

/// The queue key and envelope of `raw` put back on `queue` by a
/// requeueing reject: marked `redelivered`, as kombu's restore marks it.
fn requeue_envelope(raw: &[u8], queue: &str) -> Option<(String, String)> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    if let Some(h) = v.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".to_owned(), Value::Bool(true));
    }
    let props = v.get_mut("properties")?.as_object_mut()?;
    let priority = props.get("priority").and_then(kombu_priority).unwrap_or(0);
    if let Some(info) = props
        .get_mut("delivery_info")
        .and_then(Value::as_object_mut)
    {
        info.insert("redelivered".to_owned(), Value::Bool(true));
    }
    Some((
        crate::broker::keys::queue_key(queue, priority),
        v.to_string(),
    ))
}

/// Sends link callbacks and the next chain step after a success, link
/// errors after a failure. `unacked` is the request's delivery when it is
/// still unacked (late ack): its ack waits for them.
///
/// # Errors
///
/// After a success, the error of the first follow-up that cannot be sent
/// (then none is sent and the task fails with it). Link errors that
/// cannot be sent after a failure are logged and skipped.
fn follow_up(
    shared: &Shared,
    msg: &TaskMessage,
    state: TaskState,
    result: &Value,
    unacked: Option<&str>,
) -> Result<(), TaskError> {
    let embed = &msg.embed;
    let priority = msg.properties.priority;
    let mut out = Vec::new();
    match state {
        TaskState::Success => {
            for sig in embed.callbacks.iter().flatten() {
                out.extend(crate::canvas::message_for(
                    sig,
                    Some(result),
                    None,
                    &msg.headers,
                    priority,
                )?);
            }
            if let Some(chain) = embed.chain.as_ref().filter(|c| !c.is_empty()) {
                let mut rest = chain.clone();
                if let Some(next) = rest.pop() {
                    out.extend(crate::canvas::message_for(
                        &next,
                        Some(result),
                        Some(rest),
                        &msg.headers,
                        priority,
                    )?);
                }
            }
        }
        TaskState::Failure => {
            let id = Value::String(msg.headers.id.clone());
            for sig in embed.errbacks.iter().flatten() {
                match crate::canvas::message_for(sig, Some(&id), None, &msg.headers, priority) {
                    Ok(m) => out.extend(m),
                    Err(e) => tracing::error!(
                        "cannot send a link error of {}[{}]: {}",
                        cut(msg.headers.display_name(), LOG_NAME_MAX),
                        cut(&msg.headers.id, LOG_NAME_MAX),
                        cut(&e.to_string(), LOG_REPR_MAX)
                    ),
                }
            }
        }
        _ => {}
    }
    for (key, payload) in out {
        shared.acks.push(key, payload, unacked);
    }
    Ok(())
}

/// What a retry or a requeueing reject needs: the message as received,
/// the task's limit, and the queue it came from.
struct RetryInfo {
    raw: Arc<String>,
    max_retries: Option<u32>,
    queue: String,
}

/// Handles a task's request to be retried: sends the request again with
/// `retries + 1` and an ETA, and reports RETRY; or, when the retries are
/// used up, reports FAILURE (`MaxRetriesExceededError` for a bare retry,
/// else the task's own error). `unacked` is the request's delivery when
/// it is still unacked (late ack): its ack waits for the retry.
fn retry_or_fail(
    shared: &Shared,
    msg: &TaskMessage,
    e: &TaskError,
    retry: &RetryInfo,
    unacked: Option<&str>,
) -> (TaskState, Value, Option<String>) {
    let name = msg.headers.display_name();
    let id = cut(&msg.headers.id, LOG_NAME_MAX);
    let countdown = e.retry_countdown().unwrap_or_default();
    let allowed = retry.max_retries.is_none_or(|m| msg.headers.retries < m);
    let again = if allowed {
        match retry_message(retry.raw.as_bytes(), countdown) {
            Ok(again) => again,
            Err(reason) => {
                // A countdown no clock can reach: the task fails with why.
                bump(&shared.counters.failed);
                tracing::error!("Task {name}[{id}] cannot be retried: {reason}");
                let tb = traceback_text(name, &reason);
                return (TaskState::Failure, reason.to_json(), Some(tb));
            }
        }
    } else {
        None
    };
    if let Some((key, payload)) = again {
        tracing::info!(
            "Task {name}[{id}] retry: {}",
            cut(&e.to_string(), LOG_REPR_MAX)
        );
        bump(&shared.counters.retried);
        shared.acks.push(key, payload, unacked);
        return (TaskState::Retry, e.to_json(), Some(traceback_text(name, e)));
    }
    bump(&shared.counters.failed);
    let failure = if e.exc_type() == "Retry" {
        TaskError::new(
            "MaxRetriesExceededError",
            format!(
                "Can't retry {name}[{id}] args:{:?} kwargs:{:?}",
                msg.headers.argsrepr, msg.headers.kwargsrepr
            ),
        )
        .with_module("celery.exceptions")
    } else {
        e.clone()
    };
    tracing::error!(
        "Task {name}[{id}] raised unexpected: {}",
        cut(&failure.to_string(), LOG_REPR_MAX)
    );
    let tb = traceback_text(name, &failure);
    (TaskState::Failure, failure.to_json(), Some(tb))
}

/// The queue key and envelope of the retry of `raw`: `retries + 1`, an
/// ETA `countdown` from now, a fresh delivery tag. `Ok(None)` for v1
/// messages or unreadable ones.
///
/// # Errors
///
/// A `ValueError` when `countdown` is beyond what the clocks can carry.
fn retry_message(raw: &[u8], countdown: Duration) -> Result<Option<(String, String)>, TaskError> {
    let countdown = duration_from_secs("retry countdown", countdown.as_secs_f64())
        .map_err(|e| TaskError::value_error(e.to_string()))?;
    let eta = Timestamp::now().checked_add(countdown).ok_or_else(|| {
        TaskError::value_error(format!(
            "retry countdown of {} s is beyond the year 9999",
            countdown.as_secs_f64()
        ))
    })?;
    Ok(retry_envelope(raw, eta))
}

fn retry_envelope(raw: &[u8], eta: Timestamp) -> Option<(String, String)> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    let headers = v.get_mut("headers")?.as_object_mut()?;
    headers.get("task")?;
    let retries = headers.get("retries").and_then(Value::as_u64).unwrap_or(0);
    headers.insert("retries".to_owned(), json!(retries.saturating_add(1)));
    headers.insert("eta".to_owned(), json!(eta.to_string()));
    headers.remove("redelivered");
    let props = v.get_mut("properties")?.as_object_mut()?;
    props.insert("delivery_tag".to_owned(), json!(crate::uuid::uuid4()));
    let priority = props.get("priority").and_then(kombu_priority).unwrap_or(0);
    let info = props.get_mut("delivery_info")?.as_object_mut()?;
    info.remove("redelivered");
    let queue = info.get("routing_key")?.as_str()?.to_owned();
    Some((
        crate::broker::keys::queue_key(&queue, priority),
        v.to_string(),
    ))
}

/// A traceback text in Python's shape, so clients that print
/// `result.traceback` see where the failure came from.
fn traceback_text(name: &str, e: &TaskError) -> String {
    let msg: Vec<String> = e
        .args()
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let module = match e.exc_module() {
        "builtins" => String::new(),
        m => format!("{m}."),
    };
    format!(
        "Traceback (most recent call last):\n  File \"<greenpool task {name}>\", in run\n{module}{}: {}\n",
        e.exc_type(),
        msg.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeued_message_goes_to_its_queue_marked_redelivered() {
        let raw = br#"{"body": "", "headers": {"task": "t", "id": "1"}, "properties": {"priority": 5, "delivery_tag": "d1", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
        let (key, payload) = requeue_envelope(raw, "q2").unwrap();
        assert_eq!(key, crate::broker::keys::queue_key("q2", 5));
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["headers"]["redelivered"], json!(true));
        assert_eq!(v["properties"]["delivery_info"]["redelivered"], json!(true));
        assert_eq!(
            v["properties"]["delivery_tag"],
            json!("d1"),
            "the tag is kept"
        );
        assert!(requeue_envelope(b"not json", "q").is_none());
    }
}
