//! [`JobContext`]: what a running job can see of itself.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::job_id::JobId;
use crate::pool::Inner;

/// What a running job can see: its id and its cancellation token.
#[derive(Clone)]
pub struct JobContext {
    id: JobId,
    inner: Arc<Inner>,
    /// The token, fetched from the job's map entry on first use.
    token: OnceLock<CancellationToken>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl JobContext {
    #[inline]
    pub(crate) fn new(id: JobId, inner: Arc<Inner>) -> Self {
        JobContext {
            id,
            inner,
            token: OnceLock::new(),
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's cancellation token: cancelled at the soft time limit and
    /// by a graceful `terminate_job` (TERM or INT), before the kill. A
    /// context kept past its job's end gives a cancelled token.
    pub fn token(&self) -> &CancellationToken {
        self.token
            .get_or_init(|| match self.inner.jobs.shard(self.id).get_mut(&self.id) {
                Some(slot) => slot.token(),
                None => {
                    let gone = CancellationToken::new();
                    gone.cancel();
                    gone
                }
            })
    }

    /// True once the job has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.token().is_cancelled()
    }

    /// Completes when the job is asked to stop.
    pub async fn cancelled(&self) {
        self.token().cancelled().await
    }
}
