//! [`KillSwitch`]: the part of a job's map entry that turns kill requests
//! into an abort of its task, whenever the task's handle comes.
//!
//! A job is in the map before its task exists (see the pool's invariants),
//! so a hard kill — KILL, `terminate`, or a TERM escalated after its grace —
//! can arrive before there is anything to abort. The switch remembers it,
//! and [`KillSwitch::arm`] carries it out when the handle is stored. Both
//! happen under the map shard's lock, so neither side can miss the other.

/// Something that aborts a task: tokio's `AbortHandle`, or a counter in the
/// loom models.
pub(crate) trait Abort {
    /// Asks the task to stop at its next `.await`.
    fn abort(&self);
}

impl Abort for tokio::task::AbortHandle {
    fn abort(&self) {
        tokio::task::AbortHandle::abort(self);
    }
}

/// A job's abort handle (once its task exists) and whether a hard kill was
/// asked for.
#[derive(Debug)]
pub(crate) struct KillSwitch<A> {
    handle: Option<A>,
    hard: bool,
}

impl<A: Abort> KillSwitch<A> {
    /// A switch for a task that does not exist yet.
    pub(crate) fn new() -> Self {
        KillSwitch {
            handle: None,
            hard: false,
        }
    }

    /// Stores the task's handle, and aborts it at once if a hard kill came
    /// first.
    pub(crate) fn arm(&mut self, handle: A) {
        if self.hard {
            handle.abort();
        }
        self.handle = Some(handle);
    }

    /// A hard kill: aborts the task now, or as soon as it is armed.
    pub(crate) fn kill(&mut self) {
        self.hard = true;
        if let Some(h) = &self.handle {
            h.abort();
        }
    }

    /// The task's handle, once armed.
    pub(crate) fn handle(&self) -> Option<&A> {
        self.handle.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    struct Counted(Rc<Cell<usize>>);

    impl Abort for Counted {
        fn abort(&self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// A TERM escalated before the task's handle was stored still kills:
    /// the kill waits in the switch for the handle.
    #[test]
    fn a_kill_before_the_handle_is_carried_out_when_it_comes() {
        let aborts = Rc::new(Cell::new(0));
        let mut switch = KillSwitch::new();
        switch.kill();
        assert_eq!(aborts.get(), 0);
        switch.arm(Counted(aborts.clone()));
        assert_eq!(aborts.get(), 1);
    }

    #[test]
    fn a_kill_after_the_handle_aborts_at_once() {
        let aborts = Rc::new(Cell::new(0));
        let mut switch = KillSwitch::new();
        switch.arm(Counted(aborts.clone()));
        assert_eq!(aborts.get(), 0);
        switch.kill();
        assert_eq!(aborts.get(), 1);
    }
}

#[cfg(all(test, loom))]
mod loom_kill {
    use super::*;
    use crate::loom::sync::{AtomicUsize, Mutex};
    use loom::sync::atomic::Ordering::SeqCst;
    use loom::sync::Arc;
    use loom::thread;

    struct Counted(Arc<AtomicUsize>);

    impl Abort for Counted {
        fn abort(&self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// Kill vs spawn: a killer (or a grace escalation) and the spawner that
    /// stores the task's handle, in any order, under the shard lock: the
    /// task is aborted exactly once.
    #[test]
    fn loom_kill_races_spawn() {
        loom::model(|| {
            let aborts = Arc::new(AtomicUsize::new(0));
            let slot = Arc::new(Mutex::new(KillSwitch::new()));
            let killer = {
                let slot = slot.clone();
                thread::spawn(move || slot.lock().unwrap().kill())
            };
            slot.lock().unwrap().arm(Counted(aborts.clone()));
            killer.join().unwrap();
            assert_eq!(aborts.load(SeqCst), 1);
        });
    }
}
