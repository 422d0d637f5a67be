//! [`EntryPanic`] and [`ErrorHandler`]: what happens when an entry panics.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The timer's `on_error` handler (see [`Timer::set_on_error`]).
///
/// It is called once per panicking run, on the task of that run, so calls
/// may overlap on a multi-thread runtime. If the handler itself panics, the
/// panic is caught and logged through `tracing`, and the timer goes on.
///
/// [`Timer::set_on_error`]: crate::Timer::set_on_error
pub type ErrorHandler = Arc<dyn Fn(EntryPanic) + Send + Sync + 'static>;

/// A panic of a timer entry, handed to the timer's [`ErrorHandler`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenpool::Timer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = Timer::new();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// timer.set_on_error(move |panic| {
///     let _ = tx.send(panic.message().to_owned());
/// });
/// timer.call_after(Duration::from_secs(1), || panic!("boom"), 0).unwrap();
/// assert_eq!(rx.recv().await.unwrap(), "boom");
/// # }
/// ```
pub struct EntryPanic {
    /// The payload `panic!` was called with.
    payload: Box<dyn Any + Send + 'static>,
}

impl EntryPanic {
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> EntryPanic {
        EntryPanic { payload }
    }

    /// The panic message: the payload as a `String` or `&str`, else
    /// `"<non-string panic payload>"`.
    ///
    /// # Examples
    ///
    /// See [`EntryPanic`].
    pub fn message(&self) -> &str {
        if let Some(s) = self.payload.downcast_ref::<String>() {
            s
        } else if let Some(s) = self.payload.downcast_ref::<&'static str>() {
            s
        } else {
            "<non-string panic payload>"
        }
    }

    /// The raw payload, for example to resume the panic elsewhere.
    ///
    /// # Examples
    ///
    /// See [`EntryPanic`]; `std::panic::resume_unwind(p.into_payload())`
    /// re-raises the panic.
    pub fn into_payload(self) -> Box<dyn Any + Send + 'static> {
        self.payload
    }
}

impl fmt::Debug for EntryPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryPanic")
            .field("message", &self.message())
            .finish()
    }
}
