//! Everything this crate uses of the greenpool core, in one place: the
//! runtime, the pool, the dispatcher that applies jobs to it in order, and
//! the core job that hands a Python task to a thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use greenpool::{
    Job, JobContext, KillResult, KillSignal, Outcome, PoolState, TaskPool, TerminateReason,
};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::hooks::Hooks;
use crate::job::{JobShared, KillHow, Stats, WorkItem};
use crate::loops::Loops;
use crate::threads::Threads;

/// SIGKILL: what a kill without a signal reports.
const SIGKILL: i32 = 9;

/// What a job of the core needs besides its Python calls.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) threads: Threads,
    /// The event loops of coroutine jobs.
    pub(crate) loops: Loops,
    /// Admitted jobs by pid, for `terminate_job`.
    pub(crate) jobs: Mutex<HashMap<u64, Arc<JobShared>>>,
}

impl Shared {
    pub(crate) fn jobs(&self) -> MutexGuard<'_, HashMap<u64, Arc<JobShared>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The core pool and the runtime it runs on.
#[derive(Debug)]
pub(crate) struct Core {
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
    pool: TaskPool,
    /// What happens to jobs not yet admitted when the pool ends: see
    /// [`RUNNING`], [`DROP_QUEUED`], [`KILL_QUEUED`].
    ending: Arc<AtomicU8>,
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::UnboundedSender<Arc<JobShared>>>>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A snapshot of the core's counters, in Celery's keys and greenpool's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreInfo {
    pub(crate) limit: usize,
    pub(crate) free: isize,
    pub(crate) running: usize,
    pub(crate) waiting: usize,
    pub(crate) applied: u64,
    pub(crate) completed: u64,
    pub(crate) panicked: u64,
    pub(crate) terminated: u64,
    pub(crate) callback_panics: u64,
    pub(crate) state: &'static str,
}

/// What `kill` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillEnd {
    /// The job was killed and reported.
    Killed,
    /// The job ended by itself first.
    Exited,
    /// No such job running.
    Unknown,
}

impl Core {
    /// Builds the runtime and the pool (not started).
    pub(crate) fn new(limit: i64, shared: Arc<Shared>) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("greenpool-core")
            .enable_time()
            .build()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let pool = TaskPool::builder()
            .limit(limit)
            .build()
            .map_err(|e| Error::Limit(e.to_string()))?;
        Ok(Core {
            runtime: Some(runtime),
            pool,
            ending: Arc::new(AtomicU8::new(RUNNING)),
            shared,
            sender: Mutex::new(None),
            dispatcher: Mutex::new(None),
        })
    }

    fn runtime(&self) -> Result<&Runtime, Error> {
        self.runtime.as_ref().ok_or(Error::NotRunning)
    }

    /// A handle on the core's runtime.
    pub(crate) fn handle(&self) -> Result<tokio::runtime::Handle, Error> {
        Ok(self.runtime()?.handle().clone())
    }

    /// Starts the pool and its dispatcher.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let runtime = self.runtime()?;
        let _enter = runtime.enter();
        self.pool.start().map_err(|_| Error::AlreadyStarted)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = runtime.spawn(dispatch(
            self.pool.clone(),
            Arc::clone(&self.shared),
            rx,
            Arc::clone(&self.ending),
        ));
        *lock(&self.sender) = Some(tx);
        *lock(&self.dispatcher) = Some(task);
        Ok(())
    }

    /// Queues a job for admission. Never waits.
    pub(crate) fn submit(&self, job: Arc<JobShared>) -> Result<(), Error> {
        match &*lock(&self.sender) {
            Some(tx) if self.pool.active() => tx.send(job).map_err(|_| Error::NotRunning),
            _ => Err(Error::NotRunning),
        }
    }

    /// Kills the admitted job `pid` at once and waits until it ended.
    /// Call without the GIL.
    pub(crate) fn kill(&self, pid: u64) -> KillEnd {
        let id = greenpool::JobId::from_u64(pid);
        let Ok(runtime) = self.runtime() else {
            return KillEnd::Unknown;
        };
        match runtime.block_on(self.pool.terminate_job(id, Some(KillSignal::Kill))) {
            KillResult::Killed => KillEnd::Killed,
            KillResult::Exited | KillResult::AlreadyFinished | KillResult::Requested => {
                KillEnd::Exited
            }
            _ => KillEnd::Unknown,
        }
    }

    /// Stops taking jobs, lets the running ones finish, and stops the pool.
    /// Jobs not admitted yet run first, or with `drop_queued` never run
    /// and get no report (a Celery worker's unacknowledged messages go
    /// back to the broker). Call without the GIL.
    pub(crate) fn stop(&self, drop_queued: bool) {
        if drop_queued {
            self.ending.store(DROP_QUEUED, Ordering::Relaxed);
        }
        lock(&self.sender).take();
        let dispatcher = lock(&self.dispatcher).take();
        let Ok(runtime) = self.runtime() else {
            return;
        };
        runtime.block_on(async {
            if drop_queued {
                // Refuses the dispatcher's waiting apply at once.
                let _ = self.pool.stop().await;
                if let Some(d) = dispatcher {
                    let _ = d.await;
                }
            } else {
                if let Some(d) = dispatcher {
                    let _ = d.await;
                }
                let _ = self.pool.stop().await;
            }
        });
    }

    /// Kills every job, queued or running, and stops the pool. Call without
    /// the GIL.
    pub(crate) fn terminate(&self) {
        self.ending.store(KILL_QUEUED, Ordering::Relaxed);
        lock(&self.sender).take();
        let dispatcher = lock(&self.dispatcher).take();
        let Ok(runtime) = self.runtime() else {
            return;
        };
        runtime.block_on(async {
            // Kills the running jobs and refuses the dispatcher's next
            // apply; the dispatcher then reports what is left as killed.
            let _ = self.pool.terminate().await;
            if let Some(d) = dispatcher {
                let _ = d.await;
            }
        });
    }

    /// Closes the pool to new jobs.
    pub(crate) fn close(&self) {
        lock(&self.sender).take();
    }

    pub(crate) fn grow(&self, n: usize) -> Result<usize, Error> {
        self.pool.grow(n).map_err(|e| Error::Limit(e.to_string()))
    }

    pub(crate) fn shrink(&self, n: usize) -> Result<usize, Error> {
        self.pool.shrink(n).map_err(|e| Error::Limit(e.to_string()))
    }

    pub(crate) fn limit(&self) -> usize {
        self.pool.limit()
    }

    pub(crate) fn info(&self) -> CoreInfo {
        let i = self.pool.info();
        CoreInfo {
            limit: i.max_concurrency,
            free: i.free_threads,
            running: i.running_threads,
            waiting: i.waiting,
            applied: i.applied,
            completed: i.completed,
            panicked: i.panicked,
            terminated: i.terminated,
            callback_panics: i.callback_panics,
            state: match i.state {
                PoolState::NotStarted => "not-started",
                PoolState::Run => "run",
                PoolState::Close => "close",
                PoolState::Terminate => "terminate",
            },
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Never wait here: the dropping thread may hold the GIL that a
        // job's callback on a runtime thread is waiting for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies queued jobs to the pool in order, each waiting for its slot.
async fn dispatch(
    pool: TaskPool,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Arc<JobShared>>,
    ending: Arc<AtomicU8>,
) {
    while let Some(job) = rx.recv().await {
        if job.is_killed() {
            continue;
        }
        if ending.load(Ordering::Relaxed) != RUNNING {
            unadmitted(&shared, job, &ending);
            continue;
        }
        if !apply_one(&pool, &shared, job, &ending).await {
            // The pool closed under the apply: nothing left will run.
            break;
        }
    }
    // Jobs still queued (the pool closed) never run: each reports lost.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        unadmitted(&shared, job, &ending);
    }
}

/// While the pool runs: jobs go to the core pool.
const RUNNING: u8 = 0;
/// `stop(drop_queued)`: jobs not admitted are dropped, unreported.
const DROP_QUEUED: u8 = 1;
/// `terminate`: jobs not admitted are reported killed.
const KILL_QUEUED: u8 = 2;

/// Settles a job that will not be admitted, before `stop`/`terminate`
/// returns (their caller has let the GIL go).
fn unadmitted(shared: &Arc<Shared>, job: Arc<JobShared>, ending: &AtomicU8) {
    match ending.load(Ordering::Relaxed) {
        DROP_QUEUED => job.mark_dropped(),
        KILL_QUEUED => {
            if job.claim_kill(&shared.hooks, &shared.stats) {
                job.report_kill(&shared.hooks, KillHow::Signal(SIGKILL));
            }
        }
        _ => {
            job.report_lost_if_unreported(&shared.hooks, "the pool closed before the task started")
        }
    }
}

/// Applies one Python task to the core pool, waiting for its slot.
/// Returns false when the pool refused it (closed); the task then reports
/// lost.
async fn apply_one(
    pool: &TaskPool,
    shared: &Arc<Shared>,
    job: Arc<JobShared>,
    ending: &AtomicU8,
) -> bool {
    let on_end = {
        let shared = Arc::clone(shared);
        let job = Arc::clone(&job);
        move |outcome: &Outcome<()>| ended(&shared, &job, outcome)
    };
    let run = {
        let shared = Arc::clone(shared);
        let job = Arc::clone(&job);
        move |ctx: JobContext| run_job(shared, job, ctx.id().as_u64())
    };
    let mut core = Job::new(run).name("python-task").callback(on_end);
    if let Some(hard) = job.hard {
        core = core.timeout(hard);
    }
    if let Some(soft) = job.soft {
        core = core.soft_timeout(soft);
    }
    if job.soft.is_some() || job.hard.is_some() {
        let shared = Arc::clone(shared);
        let job = Arc::clone(&job);
        core = core.timeout_callback(move |soft, limit| {
            // The hard limit is reported by `ended`, which settles the race
            // with the task's own end.
            if soft {
                job.raise_soft(&shared.hooks, &shared.stats);
                job.notify_soft(limit.as_secs_f64());
            }
        });
    }
    match pool.apply_async(core).await {
        Ok(handle) => {
            drop(handle);
            true
        }
        Err(refused) => {
            drop(refused);
            unadmitted(shared, job, ending);
            false
        }
    }
}

/// The core job's future: hands the task to its runner (a thread, or an
/// event loop for a coroutine) and waits (without any thread waiting) until
/// the runner is done with it.
async fn run_job(shared: Arc<Shared>, job: Arc<JobShared>, pid: u64) {
    job.set_pid(pid);
    shared.jobs().insert(pid, Arc::clone(&job));
    if job.is_killed() {
        return;
    }
    let (done, finished) = oneshot::channel();
    let item = WorkItem { job, done };
    if item.job.green {
        shared.loops.submit(item);
    } else {
        shared.threads.submit(item);
    }
    let _ = finished.await;
}

/// The core's one result callback of a job: settles who reports it.
fn ended(shared: &Shared, job: &Arc<JobShared>, outcome: &Outcome<()>) {
    if let Some(pid) = job.pid() {
        shared.jobs().remove(&pid);
    }
    match outcome {
        Outcome::Completed(()) => {
            job.report_lost_if_unreported(&shared.hooks, "the task's thread ended without a result")
        }
        Outcome::Panicked(p) => job.report_lost_if_unreported(&shared.hooks, &p.to_string()),
        Outcome::Terminated(t) => {
            let how = match t.reason {
                TerminateReason::TimeLimit => {
                    KillHow::TimeLimit(job.hard.map(|d| d.as_secs_f64()).unwrap_or_default())
                }
                _ => KillHow::Signal(job.kill_signal().unwrap_or(SIGKILL)),
            };
            if job.claim_kill(&shared.hooks, &shared.stats) {
                job.report_kill(&shared.hooks, how);
            }
        }
    }
}
