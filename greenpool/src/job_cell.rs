//! [`JobCell`]: the one allocation a job shares between its task, its
//! handle and its map entry.
//!
//! It holds the job's cancellation token (made on first use: most jobs never
//! need one), the kill request that the guard turns into the terminated
//! outcome, and the outcome waiting for the handle with the handle's waker.
//! Killers waiting for a job to end wait on the pool's `job_ended` notifier
//! instead, so that the cell stays within one small allocation.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::CancellationToken;

use crate::outcome::{Outcome, Termination};

/// What the job map and the job's context may do with a cell, whatever its
/// outcome type.
pub(crate) trait JobControl: Send + Sync {
    /// The job's token, made on first use.
    fn token(&self) -> CancellationToken;
    /// Records a kill request; the first one wins.
    fn request_kill(&self, termination: Termination);
    /// `Some(killed)` once the job has ended.
    fn ended(&self) -> Option<bool>;
}

struct CellState<T> {
    /// The job's token, once somebody asked for it.
    token: Option<CancellationToken>,
    /// `Some(killed)` once the job has ended.
    ended: Option<bool>,
    /// Before the end: the first kill request, as the terminated outcome
    /// the guard reports if the job is dropped. After: the outcome, until
    /// the handle takes it.
    outcome: Option<Outcome<T>>,
    /// The handle's waker.
    handle: Option<Waker>,
}

/// The job's shared state.
pub(crate) struct JobCell<T> {
    state: Mutex<CellState<T>>,
}

impl<T> JobCell<T> {
    pub(crate) fn new() -> Self {
        JobCell {
            state: Mutex::new(CellState {
                token: None,
                ended: None,
                outcome: None,
                handle: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CellState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kill request, if any (before the end).
    pub(crate) fn kill(&self) -> Option<Termination> {
        match &self.lock().outcome {
            Some(Outcome::Terminated(t)) => Some(*t),
            _ => None,
        }
    }

    /// Stores the outcome for the handle and wakes it.
    pub(crate) fn complete(&self, outcome: Outcome<T>) {
        let killed = outcome.is_terminated();
        let handle = {
            let mut st = self.lock();
            st.ended = Some(killed);
            // A dropped handle takes no lock: the outcome then lives until
            // the guard lets go of the cell, moments from now.
            st.outcome = Some(outcome);
            st.handle.take()
        };
        if let Some(w) = handle {
            w.wake();
        }
    }

    /// The handle's poll.
    pub(crate) fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T>>> {
        let mut st = self.lock();
        if st.ended.is_some() {
            return Poll::Ready(st.outcome.take());
        }
        match &st.handle {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.handle = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T: Send> JobControl for JobCell<T> {
    fn token(&self) -> CancellationToken {
        self.lock()
            .token
            .get_or_insert_with(CancellationToken::new)
            .clone()
    }

    fn request_kill(&self, termination: Termination) {
        let mut st = self.lock();
        if st.ended.is_none() && st.outcome.is_none() {
            st.outcome = Some(Outcome::Terminated(termination));
        }
    }

    fn ended(&self) -> Option<bool> {
        self.lock().ended
    }
}
