//! Celery's eventlet `TaskPool`, rebuilt on tokio.
//!
//! A [`TaskPool`] runs *green jobs* — tokio tasks that switch only at
//! `.await` — under a concurrency limit that can grow and shrink while they
//! run. Follow one job through it (file names in brackets):
//!
//! 1. [`TaskPool::spawn`] takes a future; [`TaskPool::apply_async`] takes a
//!    [`JobBuilder`] from [`Job::new`] (target, callbacks, time limits, all
//!    typed, no allocation of their own) or a type-erased [`Job<T>`]
//!    (`job.rs`). The target builds the job's future from its
//!    [`JobContext`] (id and cancellation token, `context.rs`).
//! 2. The **limiter** (a tokio semaphore plus a debt, `limiter.rs`) admits
//!    it, or the caller waits for a slot: the backpressure a broker consumer
//!    relies on. [`TaskPool::try_apply_async`] fails at once with
//!    [`ApplyError::Full`] instead. A refused job comes back as a `Job<T>`.
//! 3. Admission (`pool/apply.rs`): the job gets a [`JobId`] (never reused)
//!    and an entry in the sharded **job map** (`job_map.rs`: kill request,
//!    token, killers) before its task exists; the pool's state is checked
//!    after that, so `close` and `terminate` never miss it (`pool/mod.rs`
//!    has the invariants). Then the [`signals::APPLY`] signal and the spawn.
//! 4. The **job's task** (`run_job.rs`) does not start if a kill came
//!    first; else it calls the accept callback, runs the target under
//!    `catch_unwind` (`unwind.rs`, the one place panics are caught) and its
//!    soft/hard time limits. Kills are carried out by the task itself: a
//!    hard kill marks the entry's **kill switch** (`kill_switch.rs`) and
//!    wakes the task, which drops the job's future. Its **guard**
//!    (`guard.rs`) ends the job exactly once, always after the job's future
//!    and its captured state are gone: callback, map entry out and the
//!    job's own killers woken, slot freed; the outcome is the task's output,
//!    which the [`JobHandle`] (`handle.rs`) reads through tokio's
//!    `JoinHandle` — no other per-job allocation.
//! 5. [`TaskPool::terminate_job`] (`pool/killing.rs`) kills by id — KILL at
//!    once, TERM/INT through the token and then after a grace — and returns
//!    once the job is gone and its callback ran; [`JobHandle::abort`] asks
//!    for the same kill without waiting.
//!
//! Around it: the lifecycle `start` → `close` → `stop`/`terminate` of
//! Celery's `BasePool` (`pool/state.rs`), four process-wide [`signals`],
//! [`TaskPool::info`] with Celery's keys ([`PoolInfo`]), and the green
//! [`Timer`] (`timer/`: kombu's timer API, one driver task and one sleep per
//! timer, entries fired as tasks).
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
mod cache_padded;
mod context;
mod error;
mod guard;
mod handle;
mod info;
mod job;
mod job_id;
mod job_map;
mod kill;
mod kill_switch;
mod limiter;
mod loom;
mod outcome;
mod pool;
mod pool_state;
mod run_job;
pub mod signals;
mod time_limits;
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
