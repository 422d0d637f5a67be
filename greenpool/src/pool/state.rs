//! The lifecycle of Celery's `BasePool`: [`PoolState`] and `start` →
//! `close` → `stop`/`terminate`.

use tokio::runtime::Handle;

use super::TaskPool;
use crate::error::{RestartError, StartError, StopError};
use crate::outcome::{TerminateReason, Termination};
use crate::pool_state::PoolState;
use crate::signals;

impl TaskPool {
    /// Starts the pool on the current tokio runtime and sends
    /// [`POOL_STARTED`](signals::POOL_STARTED).
    ///
    /// # Errors
    ///
    /// [`StartError::NotStartable`] if the pool already started or was
    /// closed; [`StartError::NoRuntime`] outside a tokio runtime.
    pub fn start(&self) -> Result<(), StartError> {
        let handle = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let _ = self.inner.runtime.set(handle);
        let from = self
            .inner
            .transition(PoolState::Run, |s| s != PoolState::NotStarted);
        if from != PoolState::NotStarted {
            return Err(StartError::NotStartable(from));
        }
        signals::POOL_STARTED.send_robust(self.inner.id, &());
        Ok(())
    }

    /// The lifecycle state.
    pub fn state(&self) -> PoolState {
        self.inner.state()
    }

    /// True only while the pool runs (state `Run`).
    pub fn active(&self) -> bool {
        self.state() == PoolState::Run
    }

    /// True once the pool has started.
    pub fn did_start_ok(&self) -> bool {
        self.state() != PoolState::NotStarted && self.inner.runtime.get().is_some()
    }

    /// Refuses new jobs; running ones go on. Callers of `apply_async` still
    /// waiting for a slot get their jobs back at once.
    pub fn close(&self) {
        self.inner
            .transition(PoolState::Close, |s| s == PoolState::Terminate);
        self.inner.limiter.permits().close();
    }

    /// Waits until no admitted job is left (the pool must have left `Run`).
    async fn drained(&self) {
        loop {
            let notified = self.inner.drained.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a last job ending in between
            // still wakes this wait.
            notified.as_mut().enable();
            if self.inner.limiter.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Sends [`POOL_PRE_SHUTDOWN`](signals::POOL_PRE_SHUTDOWN), closes the
    /// pool, waits for every admitted job to end and its callback to run,
    /// then sends [`POOL_POST_SHUTDOWN`](signals::POOL_POST_SHUTDOWN). A
    /// pool that never started still sends both and returns.
    ///
    /// # Errors
    ///
    /// [`StopError::FromOwnJob`] when called from one of this pool's jobs.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits leaves the pool closed, its jobs
    /// running, and the post-shutdown signal unsent.
    pub async fn stop(&self) -> Result<(), StopError> {
        self.check_not_own_job()?;
        signals::POOL_PRE_SHUTDOWN.send_robust(self.inner.id, &());
        self.close();
        self.drained().await;
        self.inner.transition(PoolState::Terminate, |_| false);
        signals::POOL_POST_SHUTDOWN.send_robust(self.inner.id, &());
        Ok(())
    }

    /// Kills every job, running or not yet started (each gets a terminated
    /// outcome with the reason "pool terminated"), and returns when all
    /// have ended.
    ///
    /// # Errors
    ///
    /// [`StopError::FromOwnJob`] when called from one of this pool's jobs.
    ///
    /// # Cancel safety
    ///
    /// The kills are requested before the first `.await`; dropping the
    /// future only stops the wait.
    pub async fn terminate(&self) -> Result<(), StopError> {
        self.check_not_own_job()?;
        self.inner.transition(PoolState::Terminate, |_| false);
        let wakers = self.inner.jobs.kill_all(|slot| {
            slot.request_kill(Termination {
                signal: None,
                reason: TerminateReason::PoolTerminated,
            });
            slot.switch.kill()
        });
        // After the marks and before the wake-ups: see `request_kill`.
        self.inner.bump_kill_epoch();
        for w in wakers {
            w.wake();
        }
        self.inner.limiter.permits().close();
        self.drained().await;
        Ok(())
    }

    /// Not supported by this pool, as in Celery's eventlet pool.
    ///
    /// # Errors
    ///
    /// Always [`RestartError::NotSupported`].
    pub fn restart(&self) -> Result<(), RestartError> {
        Err(RestartError::NotSupported)
    }

    fn check_not_own_job(&self) -> Result<(), StopError> {
        match crate::run_job::current_job(self.inner.id) {
            Some(id) => Err(StopError::FromOwnJob(id)),
            None => Ok(()),
        }
    }
}
