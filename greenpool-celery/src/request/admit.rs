//! Step 5 and 6: the pool job of a request. Its target makes the task's
//! context and runs the task (unless the request expired or was revoked
//! while it waited for a slot); its accept callback lists it as active,
//! stores STARTED and acks an early-ack message; its outcome callback
//! settles it ([`super::settle`]).

use std::sync::Arc;
use std::time::Instant;

use greenpool::{IntoJob, Job, JobContext, JobId, Outcome};
use serde_json::{json, Map, Value};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::outcome::TaskOutput;
use super::settle::InFlight;
use super::Prepared;
use crate::backend::{ResultMeta, TaskState};
use crate::context::TaskContext;
use crate::control::hooks::Listed;
use crate::protocol::Timestamp;
use crate::registry::RegisteredTask;
use crate::repr::{cut, LOG_NAME_MAX, LOG_REPR_MAX};
use crate::worker::Shared;

/// What the job's target needs to start the task.
struct Start {
    /// The worker (read for the revoked set).
    shared: Arc<Shared>,
    /// The task.
    task: RegisteredTask,
    /// Its positional arguments.
    args: Vec<Value>,
    /// Its keyword arguments.
    kwargs: Map<String, Value>,
    /// The context, but for the job's token.
    id: Arc<str>,
    /// The task name.
    name: Arc<str>,
    /// `retries` of the message.
    retries: u32,
    /// The ETA of the message.
    eta: Option<Timestamp>,
    /// The expiry of the message.
    expires: Option<Timestamp>,
    /// The parent task's id.
    parent_id: Option<String>,
    /// The root task's id.
    root_id: Option<String>,
    /// The queue it came from.
    queue: String,
    /// The worker's hostname.
    hostname: Arc<str>,
}

impl Start {
    /// The job's run: the task called with its context, or the reason it
    /// is not (expired, or revoked meanwhile).
    fn run(self, jctx: &JobContext) -> impl std::future::Future<Output = TaskOutput> {
        let Start {
            shared,
            task,
            args,
            kwargs,
            id,
            name,
            retries,
            eta,
            expires,
            parent_id,
            root_id,
            queue,
            hostname,
        } = self;
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
        let revoked = crate::control::hooks::revoked_at_start(&shared.control, &ctx.id);
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
    }
}

/// What the accept callback needs when the job starts.
struct Accepted {
    /// The worker.
    shared: Arc<Shared>,
    /// The request's listing entry.
    listed: Arc<Listed>,
    /// The task name.
    name: Arc<str>,
    /// The task id.
    id: Arc<str>,
    /// The STARTED meta stored (`track_started`) and its `reply_to`.
    started: Option<(ResultMeta, Option<String>)>,
    /// An early-ack request's tag and prefetch permit: acked and released
    /// when the job starts.
    early: Option<(String, Option<OwnedSemaphorePermit>)>,
}

impl Accepted {
    /// The job started: listed active, `task-started`, STARTED stored,
    /// an early-ack message acked.
    fn accepted(self, job_id: JobId) {
        let s = &*self.shared;
        crate::control::hooks::started(&s.control, &self.listed, job_id, &self.name, &self.id);
        tracing::debug!(
            "Task {}[{}] started",
            cut(&self.name, LOG_NAME_MAX),
            cut(&self.id, LOG_NAME_MAX)
        );
        if let (Some((meta, reply_to)), Some(backend)) = (&self.started, &s.control.backend) {
            backend.store(meta, reply_to.as_deref());
        }
        if let Some((tag, permit)) = self.early {
            s.ack(&tag);
            drop(permit);
        }
    }
}

/// The pool job of `req`: target, accept and outcome callbacks, limits.
pub(super) fn job(shared: &Arc<Shared>, req: Prepared) -> impl IntoJob<TaskOutput> {
    let Prepared {
        mut msg,
        tag,
        queue,
        received,
        id,
        name,
        task,
        limits,
        listed,
        mut permit,
    } = req;
    let node = &shared.control;
    let acks_late = task.options.acks_late.unwrap_or(node.config.acks_late);
    let ignore_result = msg.headers.ignore_result || task.options.ignore_result;
    let span = crate::control::hooks::task_span(&msg, &queue);
    // The job owns the arguments; a copy stays only for result_extended.
    let (args, kwargs) = if node.config.result_extended {
        (msg.args.clone(), msg.kwargs.clone())
    } else {
        (
            std::mem::take(&mut msg.args),
            std::mem::take(&mut msg.kwargs),
        )
    };
    let max_retries = task.options.max_retries;
    let start = Start {
        shared: Arc::clone(shared),
        task,
        args,
        kwargs,
        id: Arc::clone(&id),
        name: Arc::clone(&name),
        retries: msg.headers.retries,
        eta: msg.headers.eta,
        expires: msg.headers.expires,
        parent_id: msg.headers.parent_id.clone(),
        root_id: msg.headers.root_id.clone(),
        queue: queue.clone(),
        hostname: Arc::clone(&node.hostname),
    };
    // The tag goes to whichever side acks: the accept callback (early
    // ack) or the outcome callback (late ack).
    let (early, late_tag) = if acks_late {
        (None, Some(tag))
    } else {
        (Some((tag, permit.take())), None)
    };
    let started = (node.config.track_started && !ignore_result).then(|| {
        let meta = shared.meta(
            &msg,
            TaskState::Started,
            json!({"pid": std::process::id(), "hostname": node.config.hostname}),
            None,
        );
        (meta, msg.properties.reply_to.clone())
    });
    let listed = Arc::new(listed);
    let accepted = Accepted {
        shared: Arc::clone(shared),
        listed: Arc::clone(&listed),
        name: Arc::clone(&name),
        id,
        started,
        early,
    };
    // The job's name and arguments are only read by the pool's apply
    // signal: made for it when it has receivers.
    let shown = greenpool::signals::APPLY.has_receivers().then(|| {
        (
            cut(&name, LOG_NAME_MAX).into_owned(),
            cut(
                msg.headers.argsrepr.as_deref().unwrap_or_default(),
                LOG_REPR_MAX,
            )
            .into_owned(),
        )
    });
    let in_flight = InFlight {
        shared: Arc::clone(shared),
        msg,
        received,
        queue,
        max_retries,
        ignore_result,
        late_tag,
        hard_limit: limits.hard_secs,
        permit,
        listed,
        span: span.clone(),
    };
    let job = Job::new(move |jctx: JobContext| start.run(&jctx).instrument(span));
    let job = match shown {
        Some((name, args)) => job.name(name).args_repr(args),
        None => job,
    };
    let job = job
        .accept_callback(move |job_id, _| accepted.accepted(job_id))
        .callback(move |outcome: &Outcome<TaskOutput>| in_flight.settle(outcome));
    let job = match limits.hard {
        Some(hard) => job.timeout(hard),
        None => job,
    };
    match limits.soft {
        Some(soft) => job.soft_timeout(soft),
        None => job,
    }
}
