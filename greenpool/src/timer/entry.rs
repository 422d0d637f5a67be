//! [`Entry`], the callable a timer fires, and [`Deadline`], the order in
//! which pending entries fire.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::repeat::Repeat;

/// A callable that a [`Timer`] runs as a green task when its eta comes.
///
/// An entry is a cheap clone of an `Arc`; clones are the same entry, and
/// [`Entry::ptr_eq`] tells them apart from other entries. The same entry may
/// be entered into a timer more than once; each time yields its own
/// [`TimerRef`].
///
/// The callable must be `Fn` because a repeating entry runs many times, and
/// an entry entered twice may run twice at once on a multi-thread runtime.
/// If it panics, the panic goes to the timer's `on_error` handler (see
/// [`Timer::set_on_error`]) and the timer goes on.
///
/// Dropping an entry does nothing: a timer that holds it still fires it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenpool::{Entry, Timer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = Timer::new();
/// let (tx, rx) = tokio::sync::oneshot::channel();
/// let tx = std::sync::Mutex::new(Some(tx));
/// let entry = Entry::new(move || {
///     if let Some(tx) = tx.lock().unwrap().take() {
///         let _ = tx.send("fired");
///     }
/// });
/// timer.enter_after(&entry, Duration::from_secs(5), 0).unwrap();
/// assert_eq!(rx.await.unwrap(), "fired");
/// # }
/// ```
///
/// [`Timer`]: crate::Timer
/// [`Timer::set_on_error`]: crate::Timer::set_on_error
/// [`TimerRef`]: crate::TimerRef
#[derive(Clone)]
pub struct Entry {
    /// One allocation holds the repeat bookkeeping (if any) and the callable.
    inner: Arc<EntryInner<dyn Run>>,
}

/// The shared body of an [`Entry`]; `R` is unsized to `dyn Run` once built.
struct EntryInner<R: ?Sized> {
    /// `Some` for the entries made by `Timer::call_repeatedly`.
    repeat: Option<Box<Repeat>>,
    /// The user's callable, last so that it can be unsized.
    run: R,
}

/// Starts one run of an entry's callable.
pub(crate) trait Run: Send + Sync + 'static {
    /// Calls the callable; an async callable hands back its future.
    fn start(&self) -> Option<BoxFuture<'static, ()>>;
}

/// A plain closure: the whole run happens inside [`Run::start`].
struct SyncFn<F>(F);

impl<F: Fn() + Send + Sync + 'static> Run for SyncFn<F> {
    fn start(&self) -> Option<BoxFuture<'static, ()>> {
        (self.0)();
        None
    }
}

/// A closure that returns a future: the run lasts until the future is done.
struct AsyncFn<F>(F);

impl<F, Fut> Run for AsyncFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn start(&self) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin((self.0)()))
    }
}

impl Entry {
    /// Makes an entry from a plain closure.
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = greenpool::Entry::new(|| println!("tick"));
    /// assert!(!entry.is_repeating());
    /// ```
    pub fn new<F>(fun: F) -> Entry
    where
        F: Fn() + Send + Sync + 'static,
    {
        Entry::build(None, SyncFn(fun))
    }

    /// Makes an entry from a closure that returns a future; each run lasts
    /// until that future completes (a repeating entry reschedules only then).
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = greenpool::Entry::new_async(|| async {
    ///     tokio::task::yield_now().await;
    /// });
    /// assert!(!entry.is_repeating());
    /// ```
    pub fn new_async<F, Fut>(fun: F) -> Entry
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Entry::build(None, AsyncFn(fun))
    }

    /// Makes an entry that carries repeat bookkeeping around `fun`.
    pub(crate) fn repeating<F>(repeat: Repeat, fun: F) -> Entry
    where
        F: Fn() + Send + Sync + 'static,
    {
        Entry::build(Some(Box::new(repeat)), SyncFn(fun))
    }

    fn build<R: Run>(repeat: Option<Box<Repeat>>, run: R) -> Entry {
        let inner: Arc<EntryInner<dyn Run>> = Arc::new(EntryInner { repeat, run });
        Entry { inner }
    }

    /// Whether this entry was made by [`Timer::call_repeatedly`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let timer = greenpool::Timer::new();
    /// let every = std::time::Duration::from_secs(1);
    /// let tref = timer.call_repeatedly(every, || {}, 0).unwrap();
    /// assert!(tref.entry().is_repeating());
    /// # }
    /// ```
    ///
    /// [`Timer::call_repeatedly`]: crate::Timer::call_repeatedly
    pub fn is_repeating(&self) -> bool {
        self.inner.repeat.is_some()
    }

    /// Whether `self` and `other` are clones of the same entry.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = greenpool::Entry::new(|| {});
    /// let b = greenpool::Entry::new(|| {});
    /// assert!(a.ptr_eq(&a.clone()));
    /// assert!(!a.ptr_eq(&b));
    /// ```
    pub fn ptr_eq(&self, other: &Entry) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The repeat bookkeeping of a repeating entry.
    pub(crate) fn repeat(&self) -> Option<&Repeat> {
        self.inner.repeat.as_deref()
    }

    /// Calls the callable (see [`Run::start`]).
    pub(crate) fn start(&self) -> Option<BoxFuture<'static, ()>> {
        self.inner.run.start()
    }

    /// Bytes of the shared allocation behind this entry, for memory reports.
    #[cfg(test)]
    pub(crate) fn allocation_size(&self) -> usize {
        // The two reference counts, then the body.
        2 * std::mem::size_of::<usize>() + std::mem::size_of_val(&*self.inner)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("id", &Arc::as_ptr(&self.inner).cast::<()>())
            .field("repeating", &self.is_repeating())
            .finish()
    }
}

/// When a pending entry fires: earlier eta first, then lower priority value,
/// then earlier insertion.
///
/// Field order is the comparison order (the derived `Ord` is lexicographic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline {
    /// The eta in nanoseconds since the queue's origin (see `queue.rs`).
    pub(crate) eta: u64,
    /// kombu's priority: among equal etas, the lower value fires first.
    pub(crate) priority: i32,
    /// Insertion counter of the queue; breaks the remaining ties FIFO.
    pub(crate) seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_orders_by_eta_then_priority_then_seq() {
        let d = |eta, priority, seq| Deadline { eta, priority, seq };
        assert!(d(0, 9, 9) < d(1, 0, 0), "eta decides first");
        assert!(d(0, -1, 9) < d(0, 0, 0), "then priority, lower first");
        assert!(d(0, 0, 1) < d(0, 0, 2), "then insertion order");
        assert_eq!(d(0, 0, 1), d(0, 0, 1));
    }

    #[test]
    fn clones_are_the_same_entry() {
        let a = Entry::new(|| {});
        assert!(a.ptr_eq(&a.clone()));
        assert!(!a.ptr_eq(&Entry::new(|| {})));
        assert!(!a.is_repeating());
        assert!(format!("{a:?}").contains("repeating: false"));
    }
}
