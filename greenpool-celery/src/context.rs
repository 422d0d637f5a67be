//! What a running task knows about its request.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::protocol::Timestamp;

/// The request a task is running for, handed to every task function.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) id: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) retries: u32,
    pub(crate) eta: Option<Timestamp>,
    pub(crate) expires: Option<Timestamp>,
    pub(crate) parent_id: Option<String>,
    pub(crate) root_id: Option<String>,
    pub(crate) queue: String,
    pub(crate) hostname: Arc<str>,
    pub(crate) token: CancellationToken,
}

impl TaskContext {
    /// A context for calling a task function directly, outside a worker
    /// (tests, local calls).
    ///
    /// ```
    /// let ctx = greenpool_celery::TaskContext::local("tasks.add");
    /// assert_eq!(ctx.name(), "tasks.add");
    /// assert!(!ctx.token().is_cancelled());
    /// ```
    pub fn local(name: &str) -> Self {
        TaskContext {
            id: Arc::from(crate::uuid::uuid4()),
            name: Arc::from(name),
            retries: 0,
            eta: None,
            expires: None,
            parent_id: None,
            root_id: None,
            queue: String::new(),
            hostname: Arc::from(""),
            token: CancellationToken::new(),
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The registered task name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// How often this task was retried.
    pub fn retries(&self) -> u32 {
        self.retries
    }
    /// The ETA it was scheduled for, if any.
    pub fn eta(&self) -> Option<Timestamp> {
        self.eta
    }
    /// When it expires, if ever.
    pub fn expires(&self) -> Option<Timestamp> {
        self.expires
    }
    /// Id of the task that sent it.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent_id.as_deref()
    }
    /// Id of the first task of the workflow.
    pub fn root_id(&self) -> Option<&str> {
        self.root_id.as_deref()
    }
    /// The queue it was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }
    /// The worker's node name.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    /// Cancelled when the task is asked to stop: its soft time limit passed,
    /// or it is being terminated with a graceful signal. Long tasks should
    /// watch it and return early.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}
