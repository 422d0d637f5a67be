//! Synchronisation primitives that loom can explore.
//!
//! Under `cfg(all(test, loom))` these are loom's instrumented types, so that
//! `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_` walks every
//! interleaving of the code that uses them; otherwise they are `std`'s,
//! except the mutex: `parking_lot`'s, which has no poisoning to check on
//! every lock and unlock (the pool ignores poisoning anyway).

pub(crate) mod sync {
    #[cfg(all(test, loom))]
    pub(crate) use loom::sync::{Mutex, MutexGuard};

    #[cfg(not(all(test, loom)))]
    pub(crate) use parking_lot::{Mutex, MutexGuard};

    #[cfg(all(test, loom))]
    pub(crate) use loom::sync::atomic::AtomicUsize;

    #[cfg(not(all(test, loom)))]
    pub(crate) use std::sync::atomic::AtomicUsize;
}
