//! [`JobCell`]: the one allocation a job shares between its task, its
//! handle and its map entry.
//!
//! It holds the job's cancellation token (made on first use: most jobs never
//! need one), the kill request that the guard turns into the terminated
//! outcome, the outcome waiting for the handle, and the wakers of the handle
//! and of killers waiting for the job to end.

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::CancellationToken;

use crate::outcome::{Outcome, Termination};

/// What the job map and the job's context may do with a cell, whatever its
/// outcome type.
pub(crate) trait JobControl: Send + Sync {
    /// The job's token, made on first use.
    fn token(&self) -> &CancellationToken;
    /// Records a kill request; the first one wins.
    fn request_kill(&self, termination: Termination);
    /// Ready with "was it killed" once the job has ended.
    fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<bool>;
    /// True once the job has ended.
    fn has_ended(&self) -> bool;
}

struct CellState<T> {
    /// The first kill request, read by the guard.
    kill: Option<Termination>,
    /// `Some(killed)` once the job has ended.
    ended: Option<bool>,
    /// The outcome, until the handle takes it.
    outcome: Option<Outcome<T>>,
    /// True once the handle is dropped or has taken the outcome.
    detached: bool,
    /// The handle's waker.
    handle: Option<Waker>,
    /// Wakers of `terminate_job` calls waiting for the end.
    killers: Vec<Waker>,
}

/// The job's shared state.
pub(crate) struct JobCell<T> {
    token: OnceLock<CancellationToken>,
    state: Mutex<CellState<T>>,
}

impl<T> JobCell<T> {
    pub(crate) fn new() -> Self {
        JobCell {
            token: OnceLock::new(),
            state: Mutex::new(CellState {
                kill: None,
                ended: None,
                outcome: None,
                detached: false,
                handle: None,
                killers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CellState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kill request, if any.
    pub(crate) fn kill(&self) -> Option<Termination> {
        self.lock().kill
    }

    /// Stores the outcome for the handle and wakes everyone waiting.
    pub(crate) fn complete(&self, outcome: Outcome<T>) {
        let killed = outcome.is_terminated();
        let (handle, killers) = {
            let mut st = self.lock();
            st.ended = Some(killed);
            if !st.detached {
                st.outcome = Some(outcome);
            }
            (st.handle.take(), std::mem::take(&mut st.killers))
        };
        if let Some(w) = handle {
            w.wake();
        }
        for w in killers {
            w.wake();
        }
    }

    /// The handle's poll.
    pub(crate) fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T>>> {
        let mut st = self.lock();
        if st.ended.is_some() {
            st.detached = true;
            return Poll::Ready(st.outcome.take());
        }
        match &st.handle {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.handle = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The handle went away: the outcome need not be kept.
    pub(crate) fn detach(&self) {
        let mut st = self.lock();
        st.detached = true;
        st.outcome = None;
        st.handle = None;
    }
}

impl<T: Send> JobControl for JobCell<T> {
    fn token(&self) -> &CancellationToken {
        self.token.get_or_init(CancellationToken::new)
    }

    fn request_kill(&self, termination: Termination) {
        self.lock().kill.get_or_insert(termination);
    }

    fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = self.lock();
        match st.ended {
            Some(killed) => Poll::Ready(killed),
            None => {
                if !st.killers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.killers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn has_ended(&self) -> bool {
        self.lock().ended.is_some()
    }
}
