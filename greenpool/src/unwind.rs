//! Running user code without letting its panics escape.
//!
//! Callbacks and signal receivers run under [`call`]; jobs run inside
//! [`catch_panic`], which also turns on backtrace capture for the duration of
//! each poll. Capture works through a process-wide panic hook installed once
//! by the first pool built with capture on ([`install_hook`]): while a job is
//! being polled on this thread, the hook records the location and a
//! backtrace in a thread-local instead of printing, and [`catch_panic`] picks
//! them up; every other panic goes to the hook that was there before.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Once;
use std::task::Poll;

use crate::outcome::PanicInfo;

thread_local! {
    /// True while a job is being polled on this thread.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// What the hook saw of the last job panic on this thread.
    static CAPTURED: RefCell<Option<(Option<String>, Backtrace)>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs the capturing hook once per process, chained to the previous one.
pub(crate) fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_JOB.with(Cell::get) {
                let location = info.location().map(|l| l.to_string());
                let backtrace = Backtrace::force_capture();
                CAPTURED.with(|c| *c.borrow_mut() = Some((location, backtrace)));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into [`PanicInfo`].
pub(crate) fn call<R>(f: impl FnOnce() -> R) -> Result<R, PanicInfo> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| PanicInfo::from_payload(&*p))
}

/// Like [`call`], for a job's own code: the hook captures location and
/// backtrace as it does while a job is polled.
pub(crate) fn call_in_job<R>(f: impl FnOnce() -> R) -> Result<R, PanicInfo> {
    let caught = {
        let _flag = InJob::enter();
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    caught.map_err(|p| captured_info(&*p))
}

/// Like [`call`], but keeps the payload so that it can be raised again.
pub(crate) fn call_keep<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    panic::catch_unwind(AssertUnwindSafe(f))
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
        let polled = {
            let _flag = InJob::enter();
            panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx)))
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(captured_info(&*payload))),
        }
    }
}

/// Runs a job's future to its end, catching its panics with location and
/// backtrace. The future is pinned in place: no allocation of its own.
pub(crate) async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, PanicInfo> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        let polled = {
            let _flag = InJob::enter();
            panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(captured_info(&*payload))),
        }
    })
    .await
}

/// The [`PanicInfo`] of a payload, with what the hook captured for it.
fn captured_info(payload: &(dyn std::any::Any + Send)) -> PanicInfo {
    let info = PanicInfo::from_payload(payload);
    match CAPTURED.with(|c| c.borrow_mut().take()) {
        Some((location, backtrace)) => info.with_capture(location, Some(backtrace)),
        None => info,
    }
}

/// Resets the in-job flag even when the poll unwinds.
struct InJob(bool);

impl InJob {
    fn enter() -> Self {
        InJob(IN_JOB.with(|f| f.replace(true)))
    }
}

impl Drop for InJob {
    fn drop(&mut self) {
        let was = self.0;
        IN_JOB.with(|f| f.set(was));
    }
}
