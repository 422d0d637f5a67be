//! [`JobContext`]: what a running job can see of itself.

use std::fmt;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::job_id::JobId;
use crate::{PoolId, TaskPool};

/// What a running job can see: its id and its cancellation token.
///
/// It names its pool by id rather than holding a reference: most jobs never
/// ask for their token, and a reference would cost two writes per job to a
/// count that every worker shares. The first [`token`](JobContext::token)
/// finds the pool the way a [`JobHandle`](crate::JobHandle) does.
#[derive(Clone)]
pub struct JobContext {
    id: JobId,
    pool: PoolId,
    /// The token, fetched from the job's map entry on first use (or given
    /// at the start, to a job under time limits).
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
    pub(crate) fn new(id: JobId, pool: PoolId) -> Self {
        JobContext {
            id,
            pool,
            token: OnceLock::new(),
        }
    }

    /// A context whose token is already known.
    pub(crate) fn with_token(id: JobId, pool: PoolId, token: CancellationToken) -> Self {
        JobContext {
            id,
            pool,
            token: OnceLock::from(token),
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
        self.token.get_or_init(|| {
            TaskPool::by_id(self.pool)
                .and_then(|pool| pool.job_token(self.id))
                .unwrap_or_else(|| {
                    let gone = CancellationToken::new();
                    gone.cancel();
                    gone
                })
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
