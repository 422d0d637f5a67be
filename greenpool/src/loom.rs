//! Synchronisation primitives that loom can explore.
//!
//! Under `cfg(all(test, loom))` these are loom's instrumented types, so that
//! `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_` walks every
//! interleaving of the code that uses them; otherwise they are `std`'s,
//! except the mutex: `parking_lot`'s, which has no poisoning to check on
//! every lock and unlock (the pool ignores poisoning anyway). Under loom
//! the mutex is wrapped to the same API (`lock` returns the guard,
//! `try_lock` an `Option`), so the code using it has no `cfg` of its own.

pub(crate) mod sync {
    #[cfg(all(test, loom))]
    pub(crate) use loom::sync::MutexGuard;

    /// loom's mutex with `parking_lot`'s API: no poisoning to handle.
    #[cfg(all(test, loom))]
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    #[cfg(all(test, loom))]
    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }

    #[cfg(not(all(test, loom)))]
    pub(crate) use parking_lot::Mutex;

    #[cfg(all(test, loom))]
    pub(crate) use loom::sync::atomic::AtomicUsize;

    #[cfg(not(all(test, loom)))]
    pub(crate) use std::sync::atomic::AtomicUsize;
}
