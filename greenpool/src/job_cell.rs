//! [`JobCell`]: the one allocation a job shares between its task, its
//! handle and its map entry.
//!
//! It holds the job's cancellation token (made on first use: most jobs never
//! need one), the kill request that the guard turns into the terminated
//! outcome, the outcome waiting for the handle with the handle's waker, and
//! — only once somebody kills the job — the notifier its killers wait on.
//! Each job's killers wait on their own job, so a job's end wakes only them.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::outcome::{Outcome, Termination};

/// How a job ended, as its killers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// It ended with its own outcome (completed or panicked).
    Exited,
    /// It ended terminated.
    Killed,
    /// It was never admitted: a `close` raced its apply.
    Refused,
}

/// What the job map and the job's context may do with a cell, whatever its
/// outcome type.
pub(crate) trait JobControl: Send + Sync {
    /// The job's token, made on first use.
    fn token(&self) -> CancellationToken;
    /// Records a kill request; the first one wins.
    fn request_kill(&self, termination: Termination);
    /// `Some(how)` once the job has ended, after its callback ran.
    fn ended(&self) -> Option<End>;
    /// The notifier woken when the job ends, made on first use.
    fn end_notify(&self) -> Arc<Notify>;
    /// Marks a job that was taken back before it ran: it never had an
    /// outcome, and its killers stop waiting.
    fn refuse(&self);
}

/// A panic of the result callback that the handle raises again.
pub(crate) type Payload = Box<dyn Any + Send>;

struct CellState<T> {
    /// The job's token, once somebody asked for it.
    token: Option<CancellationToken>,
    /// The first kill request.
    kill: Option<Termination>,
    /// `Some` once the job has ended.
    end: Option<End>,
    /// The outcome, from the end until the handle takes it.
    outcome: Option<Outcome<T>>,
    /// The result callback's panic, for the handle to raise again
    /// (`callbacks_propagate`).
    propagate: Option<Payload>,
    /// The handle's waker.
    handle: Option<Waker>,
    /// What killers wait on; made by the first killer.
    killers: Option<Arc<Notify>>,
}

/// The job's shared state.
pub(crate) struct JobCell<T> {
    /// Set once a kill was requested, so that the job's start can look
    /// without taking the lock.
    kill_requested: AtomicBool,
    state: Mutex<CellState<T>>,
}

impl<T> JobCell<T> {
    pub(crate) fn new() -> Self {
        JobCell {
            kill_requested: AtomicBool::new(false),
            state: Mutex::new(CellState {
                token: None,
                kill: None,
                end: None,
                outcome: None,
                propagate: None,
                handle: None,
                killers: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CellState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True once a kill was requested. `SeqCst` pairs with the store in
    /// `request_kill`: a start that misses the mark came before the request.
    pub(crate) fn kill_requested(&self) -> bool {
        self.kill_requested.load(Ordering::SeqCst)
    }

    /// The kill request, if any.
    pub(crate) fn kill(&self) -> Option<Termination> {
        self.lock().kill
    }

    /// Stores the outcome for the handle, wakes the handle and the killers.
    pub(crate) fn complete(&self, outcome: Outcome<T>, propagate: Option<Payload>) {
        let end = if outcome.is_terminated() {
            End::Killed
        } else {
            End::Exited
        };
        let (handle, killers) = {
            let mut st = self.lock();
            st.end = Some(end);
            // A dropped handle takes no lock: the outcome then lives until
            // the guard lets go of the cell, moments from now.
            st.outcome = Some(outcome);
            st.propagate = propagate;
            (st.handle.take(), st.killers.take())
        };
        if let Some(w) = handle {
            w.wake();
        }
        if let Some(n) = killers {
            n.notify_waiters();
        }
    }

    /// The handle's poll: the outcome, and a callback panic to raise.
    pub(crate) fn poll_outcome(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<(Option<Outcome<T>>, Option<Payload>)> {
        let mut st = self.lock();
        if st.end.is_some() {
            return Poll::Ready((st.outcome.take(), st.propagate.take()));
        }
        match &st.handle {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.handle = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// True once the job has ended.
    pub(crate) fn is_ended(&self) -> bool {
        self.lock().end.is_some()
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
        if st.end.is_none() && st.kill.is_none() {
            st.kill = Some(termination);
            self.kill_requested.store(true, Ordering::SeqCst);
        }
    }

    fn ended(&self) -> Option<End> {
        self.lock().end
    }

    fn end_notify(&self) -> Arc<Notify> {
        Arc::clone(self.lock().killers.get_or_insert_with(Default::default))
    }

    fn refuse(&self) {
        let killers = {
            let mut st = self.lock();
            st.end = Some(End::Refused);
            st.killers.take()
        };
        if let Some(n) = killers {
            n.notify_waiters();
        }
    }
}
