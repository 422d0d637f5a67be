//! How a job ended: [`Outcome`], with [`PanicInfo`] and [`Termination`].

use std::any::Any;
use std::backtrace::Backtrace;
use std::fmt;
use std::sync::Arc;

use crate::kill::KillSignal;

/// How a job ended. Every applied job gets exactly one.
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    /// The job ran to its end and returned this value.
    Completed(T),
    /// The job panicked (Celery reports a `WorkerLostError` here).
    Panicked(PanicInfo),
    /// The job was killed: by `terminate_job`, `terminate` or a hard time
    /// limit. A job killed before it started never ran its target.
    Terminated(Termination),
}

impl<T> Outcome<T> {
    /// True for [`Outcome::Completed`].
    pub fn is_completed(&self) -> bool {
        matches!(self, Outcome::Completed(_))
    }

    /// True for [`Outcome::Panicked`].
    pub fn is_panicked(&self) -> bool {
        matches!(self, Outcome::Panicked(_))
    }

    /// True for [`Outcome::Terminated`].
    pub fn is_terminated(&self) -> bool {
        matches!(self, Outcome::Terminated(_))
    }

    /// The value of a completed job.
    pub fn completed(self) -> Option<T> {
        match self {
            Outcome::Completed(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a completed job, by reference.
    pub fn completed_ref(&self) -> Option<&T> {
        match self {
            Outcome::Completed(v) => Some(v),
            _ => None,
        }
    }

    /// Why a killed job was killed.
    pub fn termination(&self) -> Option<&Termination> {
        match self {
            Outcome::Terminated(t) => Some(t),
            _ => None,
        }
    }

    /// What a panicked job said.
    pub fn panic_info(&self) -> Option<&PanicInfo> {
        match self {
            Outcome::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

/// What a panic left behind: its payload's type and text, where it happened,
/// and a backtrace when one was captured.
#[derive(Clone)]
pub struct PanicInfo {
    /// Boxed, so that outcomes stay small in the common, completed case.
    data: Box<PanicData>,
}

#[derive(Clone)]
struct PanicData {
    /// The Rust type of the payload.
    type_name: &'static str,
    /// The payload's text, or a placeholder when it was not a string.
    message: String,
    /// `file:line:column` of the panic, when the pool's hook saw it.
    location: Option<String>,
    /// The backtrace, when the pool's hook captured one.
    backtrace: Option<Arc<Backtrace>>,
}

impl PanicInfo {
    /// Reads a payload from `catch_unwind`: a `&str` or `String` payload
    /// gives its text.
    pub fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let (type_name, message) = if let Some(s) = payload.downcast_ref::<&'static str>() {
            ("&str", (*s).to_owned())
        } else if let Some(s) = payload.downcast_ref::<String>() {
            ("String", s.clone())
        } else {
            (
                "Box<dyn Any + Send>",
                "panic payload is not a string".to_owned(),
            )
        };
        PanicInfo {
            data: Box::new(PanicData {
                type_name,
                message,
                location: None,
                backtrace: None,
            }),
        }
    }

    pub(crate) fn with_capture(
        mut self,
        location: Option<String>,
        backtrace: Option<Backtrace>,
    ) -> Self {
        self.data.location = location;
        self.data.backtrace = backtrace.map(Arc::new);
        self
    }

    /// The Rust type of the panic payload: `&str`, `String`, or
    /// `Box<dyn Any + Send>` for anything else.
    pub fn type_name(&self) -> &'static str {
        self.data.type_name
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.data.message
    }

    /// Where the panic happened, as `file:line:column`, when known.
    pub fn location(&self) -> Option<&str> {
        self.data.location.as_deref()
    }

    /// The backtrace captured at the panic, when there is one.
    pub fn backtrace(&self) -> Option<&Backtrace> {
        self.data.backtrace.as_deref()
    }

    /// The backtrace as text (empty when none was captured).
    pub fn backtrace_text(&self) -> String {
        self.data
            .backtrace
            .as_ref()
            .map(|b| b.to_string())
            .unwrap_or_default()
    }
}

impl fmt::Debug for PanicInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicInfo")
            .field("type_name", &self.data.type_name)
            .field("message", &self.data.message)
            .field("location", &self.data.location)
            .field("backtrace", &self.data.backtrace.is_some())
            .finish()
    }
}

impl fmt::Display for PanicInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.data.location {
            Some(at) => write!(f, "panicked at {at}: {}", self.data.message),
            None => write!(f, "panicked: {}", self.data.message),
        }
    }
}

/// Why a job was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TerminateReason {
    /// [`TaskPool::terminate_job`](crate::TaskPool::terminate_job).
    Killed,
    /// The job's hard time limit passed.
    TimeLimit,
    /// [`TaskPool::terminate`](crate::TaskPool::terminate).
    PoolTerminated,
    /// The runtime shut down under the job.
    RuntimeShutdown,
}

impl fmt::Display for TerminateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TerminateReason::Killed => "killed",
            TerminateReason::TimeLimit => "time limit",
            TerminateReason::PoolTerminated => "pool terminated",
            TerminateReason::RuntimeShutdown => "runtime shut down",
        })
    }
}

/// A killed job's account: which signal, if any, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Termination {
    /// The signal given to `terminate_job`, if any.
    pub signal: Option<KillSignal>,
    /// Why the job was killed.
    pub reason: TerminateReason,
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signal {
            Some(sig) => write!(f, "{} ({sig})", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}
