//! x

mod timer;

pub use timer::{
    CancelResult, Entry, EntryPanic, ErrorHandler, Scheduled, Timer, TimerError, TimerRef,
};
