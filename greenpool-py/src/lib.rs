//! The native half of the `greenpool` Python package: a Celery pool whose
//! Python tasks run on OS threads owned by Rust, or as coroutines on event
//! loops owned by Rust, admitted, timed and killed by the greenpool core.
//!
//! Python sees one module, `greenpool._greenpool`, with `Pool` (the engine
//! behind `greenpool.celery.TaskPool`), `Job` (the handle `on_apply`
//! returns), `GreenJob` and `LoopHandle` (what a loop's Python half works
//! with) and `Timer` (the pool's `Timer`, kombu's API over the core's
//! timer, `timer.rs`). Follow one task through it:
//!
//! 1. `Pool.apply` wraps the Python target and its callbacks in a
//!    `JobShared` (`job.rs`), marked green for a coroutine task, and hands
//!    it to the **dispatcher**, a tokio task that applies jobs to the core
//!    pool in order, waiting for a slot when all are taken (`core.rs`, the
//!    only file that uses the core's API). The Python caller never waits.
//!    Every seconds value from Python becomes a duration in `seconds.rs`.
//! 2. Once admitted, the job gets its pid (the core's `JobId`: unique,
//!    never reused) and goes to its runner:
//!    - a **thread** (`threads.rs`): a pool of OS threads with small
//!      stacks that grows to the limit and lets idle threads go; each waits
//!      with the GIL released;
//!    - or an **event loop** (`loops.rs`): a few threads, each running an
//!      asyncio loop through `greenpool/_loop.py`; the job is queued and
//!      the loop woken through a socket pair, without the GIL. The loop
//!      gets a `GreenJob` (`green.rs`) and runs it as an asyncio task.
//! 3. The runner calls the accept callback (unless Celery revoked the
//!    request meanwhile), then the target, then the result callback (or
//!    the error callback), like Celery's `apply_target`; only then is the
//!    slot freed.
//! 4. A kill (`terminate_job`, a hard time limit, `terminate`) ends the job
//!    in the core at once: its one outcome is reported, its slot freed. On
//!    a thread, an exception is raised at its next Python bytecode
//!    (`hooks.rs`: `PyThreadState_SetAsyncExc`, called from Python through
//!    `ctypes`, so this crate needs no `unsafe`); a thread blocked in a C
//!    call takes it when the call returns, and is *abandoned* until then.
//!    On a loop, the coroutine's asyncio task is cancelled at its current
//!    `await`.
//!
//! Who reports a job's outcome is settled by one small state machine per
//! job (`job::Phase`), under the job's lock: the runner that finished the
//! target (or the coroutine), or the kill that came first. So every job
//! gets exactly one report.
//!
//! The Rust items are internal; the Python API is documented in the
//! package (`greenpool/celery.py`, `greenpool/_loop.py`) and the README.

mod core;
mod error;
mod green;
mod hooks;
mod job;
mod loops;
mod pool;
mod release;
mod seconds;
mod threads;
mod timer;

use pyo3::prelude::*;

/// The `greenpool._greenpool` module.
#[pymodule]
fn _greenpool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<pool::Pool>()?;
    m.add_class::<pool::PyJob>()?;
    m.add_class::<green::GreenJob>()?;
    m.add_class::<loops::LoopHandle>()?;
    m.add_class::<timer::Timer>()?;
    m.add_class::<timer::PyTimerRef>()?;
    m.add("PoolError", m.py().get_type::<error::PoolError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
