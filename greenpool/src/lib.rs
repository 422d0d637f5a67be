//! Celery's eventlet `TaskPool`, rebuilt on tokio.
//!
//! A [`TaskPool`] runs *green jobs* — tokio tasks that switch only at
//! `.await` — under a concurrency limit that can grow and shrink while they
//! run. Follow one job through it:
//!
//! 1. [`TaskPool::apply_async`] takes a [`Job`]: a target that builds the
//!    job's future from its [`JobContext`] (id and cancellation token),
//!    plus an optional result callback, accept callback and time limits.
//! 2. The **limiter** (a tokio semaphore plus a debt, see `limiter.rs`)
//!    admits it, or the caller waits for a slot: that wait is the
//!    backpressure a broker consumer relies on. [`TaskPool::try_apply_async`]
//!    fails at once with [`ApplyError::Full`] instead. A rejected job always
//!    comes back untouched.
//! 3. The job gets a [`JobId`] (never reused) and an entry in the **job
//!    map** (abort handle and token) before its task is spawned, and the
//!    [`signals::APPLY`] signal is sent.
//! 4. The **job wrapper** calls the accept callback on first poll, runs the
//!    target under `catch_unwind` and its soft/hard time limits, and hands
//!    the [`Outcome`] — completed, panicked or terminated — to a guard that
//!    removes the map entry, calls the result callback exactly once, wakes
//!    the [`JobHandle`] and frees the slot. The guard also runs when the
//!    task is dropped, so jobs killed before they started still get their
//!    one callback.
//! 5. [`TaskPool::terminate_job`] kills by id (KILL at once; TERM/INT via the
//!    token first) and returns after the callback ran.
//!
//! Around it: the lifecycle `start` → `close` → `stop`/`terminate` of
//! Celery's `BasePool`, four process-wide [`signals`], [`TaskPool::info`]
//! with Celery's keys ([`PoolInfo`]), and the green [`Timer`] (kombu's timer
//! API, one driver task and one sleep per timer, entries fired as tasks).
//!
//! # Examples
//!
//! ```
//! use greenpool::{Job, KillResult, KillSignal, Outcome, TaskPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let pool = TaskPool::builder().limit(10).build().unwrap();
//! pool.start().unwrap();
//!
//! let sum = pool
//!     .apply_async(Job::new(|_ctx| async { 2 + 2 }).name("add"))
//!     .await
//!     .unwrap();
//! let parked = pool
//!     .apply_async(Job::new(|ctx| async move { ctx.cancelled().await }))
//!     .await
//!     .unwrap();
//! pool.grow(5).unwrap();
//! pool.shrink(3).unwrap();
//! assert_eq!(pool.limit(), 12);
//!
//! assert_eq!(pool.terminate_job(parked.id(), Some(KillSignal::Kill)).await, KillResult::Killed);
//! assert!(matches!(parked.await, Outcome::Terminated(_)));
//! assert_eq!(sum.await.completed(), Some(4));
//! pool.stop().await.unwrap();
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

mod builder;
mod context;
mod error;
mod guard;
mod handle;
mod info;
mod job;
mod job_cell;
mod job_id;
mod job_map;
mod kill;
mod kill_switch;
mod limiter;
mod loom;
mod outcome;
mod pool;
mod run_job;
pub mod signals;
mod timer;
mod unwind;

pub use builder::PoolBuilder;
pub use context::JobContext;
pub use error::{ApplyError, BuildError, ResizeError, RestartError, StartError, StopError};
pub use handle::JobHandle;
pub use info::PoolInfo;
pub use job::{job, IntoJob, Job, JobBuilder, NoAcceptCallback, NoResultCallback, TimeoutCallback};
pub use job_id::JobId;
pub use kill::{KillResult, KillSignal};
pub use outcome::{Outcome, PanicInfo, TerminateReason, Termination};
pub use pool::{PoolId, PoolState, TaskPool};
pub use timer::{
    CancelResult, Entry, EntryPanic, ErrorHandler, Scheduled, Timer, TimerError, TimerRef,
};
pub use tokio_util::sync::CancellationToken;
