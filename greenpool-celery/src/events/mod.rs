//! Celery events: what monitors (`celery events`, Flower) learn of the
//! worker and its tasks.
//!
//! Every event is a kombu envelope PUBLISHed on
//! `/{db}.celeryev/<type with - as .>` (the `celeryev` exchange is a
//! fanout on Redis), with `hostname`, `utcoffset`, `pid`, a Lamport
//! `clock`, `timestamp` and `type`. Worker events (`worker-online`,
//! `worker-heartbeat` every 2 s, `worker-offline`) always go out, so
//! monitors list the worker; task events (`task-received`, `-started`,
//! `-succeeded`, `-failed`, `-retried`, `-revoked`, `-rejected`) go out with `-E` or
//! after `enable_events`.

mod clock;
mod dispatcher;
pub(crate) mod heartbeat;
pub(crate) mod task;

pub(crate) use clock::LamportClock;
#[cfg(test)]
pub(crate) use dispatcher::Captured;
pub(crate) use dispatcher::EventDispatcher;
