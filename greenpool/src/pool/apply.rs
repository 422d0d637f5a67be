//! Applying jobs: `apply_async`, `try_apply_async`, `spawn`, and the one
//! place where a job is admitted.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{SemaphorePermit, TryAcquireError};

use super::{PoolState, TaskPool};
use crate::error::ApplyError;
use crate::handle::JobHandle;
use crate::job::{job, IntoJob, Job};
use crate::job_id::JobId;
use crate::job_map::{End, Slot};
use crate::run_job::Admitted;
use crate::signals::{self, ApplyArgs};

/// What applying a job gives: its handle, or the job back with the reason.
pub(crate) type Applied<T> = Result<JobHandle<T>, ApplyError<Job<T>>>;

impl TaskPool {
    /// Applies a job, waiting for a free slot when all are taken (unless
    /// the pool was built with `putlocks(false)`).
    ///
    /// Takes a [`JobBuilder`](crate::JobBuilder) (what [`Job::new`] and
    /// [`job`] return, applied with no allocation of its own) or a
    /// type-erased [`Job<T>`]. The job is in the job map before it can run;
    /// its accept callback runs when it first runs, its result callback
    /// exactly once when it ends.
    ///
    /// # Errors
    ///
    /// [`ApplyError::NotRunning`] when the pool is not running, also when it
    /// closes while this call waits; [`ApplyError::Full`] without putlocks.
    /// Either way the job comes back as a [`Job<T>`], not run.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for a slot means the job was
    /// never applied: nothing runs and no callback fires.
    pub async fn apply_async<T, J>(&self, job: J) -> Applied<T>
    where
        T: Send + 'static,
        J: IntoJob<T>,
    {
        let state = self.inner.state();
        if state != PoolState::Run {
            return Err(ApplyError::NotRunning {
                state,
                job: job.into_job(),
            });
        }
        if !self.inner.config.putlocks {
            return self.try_apply_async(job);
        }
        loop {
            // A free slot needs no waiting, and no waiting count.
            let permit = match self.inner.limiter.permits().try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    let acquired = {
                        let _waiting = Waiting::enter(&self.inner.counters.waiting);
                        self.inner.limiter.permits().acquire().await
                    };
                    match acquired {
                        Ok(permit) => permit,
                        Err(_) => {
                            return Err(ApplyError::NotRunning {
                                state: self.inner.state(),
                                job: job.into_job(),
                            })
                        }
                    }
                }
            };
            if self.take_slot(permit) {
                return self.admit(job);
            }
        }
    }

    /// Runs a future as a job, waiting for a free slot: the simple form of
    /// [`apply_async`](TaskPool::apply_async), as `JoinSet::spawn` is for
    /// tokio tasks.
    ///
    /// # Errors
    ///
    /// As [`apply_async`](TaskPool::apply_async): the job comes back, not
    /// run, when the pool is not running.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let pool = greenpool::TaskPool::builder().limit(2).build().unwrap();
    /// pool.start().unwrap();
    /// let handle = pool.spawn(async { 40 + 2 }).await.unwrap();
    /// assert_eq!(handle.await.completed(), Some(42));
    /// # pool.stop().await.unwrap();
    /// # }
    /// ```
    pub async fn spawn<Fut, T>(&self, fut: Fut) -> Applied<T>
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.apply_async(job(fut)).await
    }

    /// Applies a job if a slot is free, without waiting.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Full`] when every slot is taken;
    /// [`ApplyError::NotRunning`] when the pool is not running. The job
    /// comes back, not run.
    // The job comes back by value in the error, as in tokio's `SendError`.
    #[allow(clippy::result_large_err)]
    pub fn try_apply_async<T, J>(&self, job: J) -> Applied<T>
    where
        T: Send + 'static,
        J: IntoJob<T>,
    {
        let state = self.inner.state();
        if state != PoolState::Run {
            return Err(ApplyError::NotRunning {
                state,
                job: job.into_job(),
            });
        }
        loop {
            match self.inner.limiter.permits().try_acquire() {
                Ok(permit) => {
                    if self.take_slot(permit) {
                        return self.admit(job);
                    }
                }
                Err(TryAcquireError::NoPermits) => return Err(ApplyError::Full(job.into_job())),
                Err(TryAcquireError::Closed) => {
                    return Err(ApplyError::NotRunning {
                        state: self.inner.state(),
                        job: job.into_job(),
                    })
                }
            }
        }
    }

    /// Makes a permit taken from the semaphore a job's slot; false when it
    /// paid a debt left by a shrink instead, and the caller must take
    /// another (see `limiter.rs`).
    #[inline]
    fn take_slot(&self, permit: SemaphorePermit<'_>) -> bool {
        // The slot now belongs to the job until `release_slot`.
        permit.forget();
        self.inner.limiter.admit()
    }

    /// Admits a job on the slot it was given and spawns it.
    #[allow(clippy::result_large_err)]
    #[inline]
    fn admit<T, J>(&self, job: J) -> Applied<T>
    where
        T: Send + 'static,
        J: IntoJob<T>,
    {
        let inner = &self.inner;
        let Some(runtime) = inner.runtime.get() else {
            inner.release_slot();
            return Err(ApplyError::NotRunning {
                state: inner.state(),
                job: job.into_job(),
            });
        };
        let id = JobId(inner.next_job.fetch_add(1, Ordering::Relaxed));
        // Before the entry exists: a kill that finds the entry moves the
        // epoch past this, and the job's first poll looks.
        let epoch = inner.kill_epoch.load(Ordering::SeqCst);
        // Slot (taken), then map entry, then the state check: see the
        // invariants.
        inner.jobs.shard(id).insert(id, Slot::new());
        let state = inner.state();
        if state != PoolState::Run {
            let slot = inner.jobs.shard(id).remove(&id);
            // A killer may have found the job in the map meanwhile.
            if let Some(killers) = slot.and_then(|s| s.into_killers()) {
                killers.finish(End::Refused);
            }
            inner.counters.refused();
            inner.release_slot();
            return Err(ApplyError::NotRunning {
                state,
                job: job.into_job(),
            });
        }
        // Counted as applied by its id alone (see `TaskPool::info`).
        // Sent once the job is surely admitted: a receiver may close the
        // pool, and the job still runs.
        if signals::APPLY.has_receivers() {
            let meta = job.meta();
            let args = ApplyArgs {
                job_id: id,
                name: meta.name.as_deref().map(str::to_owned),
                args: meta.args.clone(),
            };
            signals::APPLY.send_robust(inner.id, &args);
        }
        // Spawned outside the shard lock: a runtime that is shutting down
        // drops the future inside `spawn`, and its guard takes that lock.
        let task = job.launch(Admitted {
            inner,
            id,
            epoch,
            runtime,
            _outcome: PhantomData,
        });
        Ok(JobHandle::new(id, task, inner.id))
    }
}

/// Counts a waiting caller while it waits, even if it is dropped.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(super) fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
