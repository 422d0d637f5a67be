//! Running user code without letting its panics escape: the one place
//! where the pool catches panics.
//!
//! [`call`] runs a callback or a signal receiver; [`call_in_job`] builds
//! and polls a job's future (under time limits, [`CatchPanic`] polls it,
//! with the same catch). Job code additionally gets
//! its location and backtrace captured: a process-wide panic hook, installed
//! once by the first pool built with capture on ([`install_hook`]), records
//! them in a thread-local while a job is being polled on this thread, and
//! then hands the panic on to the hook that was there before, unchanged. So
//! a panic that a job catches itself is reported exactly as it would be
//! without the pool, and one the pool catches gets its location and
//! backtrace in [`PanicInfo`].

use std::any::Any;
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::task::Poll;

use crate::outcome::PanicInfo;

/// [`JOB`] bit: a job is being polled on this thread.
const IN_JOB: u8 = 1;
/// [`JOB`] bit: [`CAPTURED`] holds something.
const PENDING: u8 = 2;

thread_local! {
    /// [`IN_JOB`] and [`PENDING`]: one cheap cell that every job poll
    /// reads, so that the capture itself is only touched after a panic.
    static JOB: Cell<u8> = const { Cell::new(0) };
    /// What the hook saw of the last job panic on this thread.
    static CAPTURED: RefCell<Option<(Option<String>, Backtrace)>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs the capturing hook once per process, chained to the previous
/// one, which still sees every panic.
pub(crate) fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if JOB.with(Cell::get) & IN_JOB != 0 {
                let location = info.location().map(|l| l.to_string());
                let backtrace = Backtrace::force_capture();
                CAPTURED.with(|c| *c.borrow_mut() = Some((location, backtrace)));
                JOB.with(|j| j.set(j.get() | PENDING));
            }
            previous(info);
        }));
    });
}

/// Whose code runs under [`catch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    /// A callback or receiver: the panic as the payload says it.
    Callback,
    /// The job's own code: with what the hook captured.
    Job,
}

/// The one catcher: runs `f`, and returns its panic payload if it panics.
#[inline]
fn catch<R>(code: Code, f: impl FnOnce() -> R) -> Result<R, Box<dyn Any + Send>> {
    if code == Code::Job {
        // A capture left by a panic that the job caught itself must not be
        // mistaken for this one's (`enter` drops it).
        let _flag = InJob::enter();
        panic::catch_unwind(AssertUnwindSafe(f))
    } else {
        panic::catch_unwind(AssertUnwindSafe(f))
    }
}

/// Runs a callback or receiver, turning a panic into [`PanicInfo`].
#[inline]
pub(crate) fn call<R>(f: impl FnOnce() -> R) -> Result<R, PanicInfo> {
    catch(Code::Callback, f).map_err(|p| PanicInfo::from_payload(&*p))
}

/// Like [`call`], but keeps the payload so that it can be raised again.
#[inline]
pub(crate) fn call_keep<R>(f: impl FnOnce() -> R) -> Result<R, Box<dyn Any + Send>> {
    catch(Code::Callback, f)
}

/// Runs the job's own code (building or polling its future), with the
/// capture of a job's poll.
#[inline]
pub(crate) fn call_in_job<R>(f: impl FnOnce() -> R) -> Result<R, PanicInfo> {
    catch(Code::Job, f).map_err(|p| captured_info(&*p))
}

pin_project_lite::pin_project! {
    /// Polls a job's future, catching its panics with location and
    /// backtrace; the job's future is stored in place, with no overhead.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct CatchPanic<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> CatchPanic<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchPanic { inner }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, PanicInfo>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch(Code::Job, || inner.poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(captured_info(&*payload))),
        }
    }
}

/// The [`PanicInfo`] of a payload, with what the hook captured for it.
fn captured_info(payload: &(dyn Any + Send)) -> PanicInfo {
    let info = PanicInfo::from_payload(payload);
    match take_capture() {
        Some((location, backtrace)) => info.with_capture(location, Some(backtrace)),
        None => info,
    }
}

/// Takes what the hook captured, if anything.
fn take_capture() -> Option<(Option<String>, Backtrace)> {
    if JOB.with(Cell::get) & PENDING == 0 {
        return None;
    }
    JOB.with(|j| j.set(j.get() & !PENDING));
    CAPTURED.with(|c| c.borrow_mut().take())
}

/// Sets the in-job bit, dropping any capture left over, and resets the bit
/// even when the poll unwinds (a capture made meanwhile stays, for
/// [`captured_info`]).
struct InJob(u8);

impl InJob {
    #[inline]
    fn enter() -> Self {
        let was = JOB.with(Cell::get);
        if was & PENDING != 0 {
            drop_capture();
        }
        JOB.with(|j| j.set(IN_JOB));
        InJob(was & IN_JOB)
    }
}

/// Drops a capture left over by a panic that a job caught itself.
#[cold]
#[inline(never)]
fn drop_capture() {
    drop(take_capture());
}

impl Drop for InJob {
    #[inline]
    fn drop(&mut self) {
        let was = self.0;
        JOB.with(|j| j.set((j.get() & PENDING) | was));
    }
}
