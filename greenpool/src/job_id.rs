//! [`JobId`]: a job's name within its pool.

use std::fmt;

/// A job's id: unique within its pool and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The id as a number (ids count up from 1 in each pool).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from its number, as a remote caller gives it (Celery's
    /// `terminate_job(pid)`). Ids are per pool: a number this pool never
    /// handed out is [`KillResult::Unknown`](crate::KillResult::Unknown) to
    /// it.
    pub fn from_u64(n: u64) -> Self {
        JobId(n)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}
