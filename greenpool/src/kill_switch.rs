//! [`KillSwitch`]: the part of a job's map entry that turns a hard kill
//! into a wake-up of the job's task, whenever the task can be woken.
//!
//! A job is in the map before its task exists (see the pool's invariants),
//! and its task leaves its waker in the entry only the first time it waits
//! (a job that ends in its first poll never does). So a hard kill — KILL,
//! `terminate`, or a TERM escalated after its grace — can arrive before
//! there is anything to wake. The switch remembers it: the task looks at
//! the switch when it first waits ([`KillSwitch::register`]) and, through
//! the pool's kill epoch, on every later poll after a kill anywhere in the
//! pool. Both sides act under the map shard's lock, so neither can miss the
//! other.

/// A job's waker `W` (a `Waker`; a counter in the loom models), once it
/// waited, and whether a hard kill was asked for.
#[derive(Debug)]
pub(crate) struct KillSwitch<W> {
    waker: Option<W>,
    hard: bool,
}

impl<W> KillSwitch<W> {
    /// A switch for a task that has not waited yet.
    #[inline]
    pub(crate) fn new() -> Self {
        KillSwitch {
            waker: None,
            hard: false,
        }
    }

    /// The task is about to wait: keeps its waker, unless a hard kill came
    /// first; true means "killed, end now".
    pub(crate) fn register(&mut self, waker: impl FnOnce() -> W) -> bool {
        if self.hard {
            return true;
        }
        if self.waker.is_none() {
            self.waker = Some(waker());
        }
        false
    }

    /// A hard kill: returns the waker to wake (after the lock is released),
    /// if the task is waiting; otherwise the task finds the kill itself.
    pub(crate) fn kill(&mut self) -> Option<W> {
        self.hard = true;
        self.waker.take()
    }

    /// True once a hard kill was asked for.
    pub(crate) fn is_killed(&self) -> bool {
        self.hard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    struct Counted(Rc<Cell<usize>>);

    impl Counted {
        fn wake(self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// A TERM escalated before the task ever waited still kills: the task
    /// finds the kill when it registers.
    #[test]
    fn a_kill_before_the_task_waits_is_found_when_it_registers() {
        let wakes = Rc::new(Cell::new(0));
        let mut switch = KillSwitch::new();
        assert!(switch.kill().is_none());
        assert!(switch.register(|| Counted(wakes.clone())));
        assert_eq!(wakes.get(), 0);
    }

    #[test]
    fn a_kill_after_the_task_waits_wakes_it() {
        let wakes = Rc::new(Cell::new(0));
        let mut switch = KillSwitch::new();
        assert!(!switch.register(|| Counted(wakes.clone())));
        switch.kill().expect("a waker").wake();
        assert_eq!(wakes.get(), 1);
        assert!(switch.is_killed());
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

    impl Counted {
        fn wake(self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// Kill vs spawn: a killer (or a grace escalation) and the job's task
    /// registering its waker, in any order, under the shard lock: either
    /// the task sees the kill when it registers, or it is woken once.
    #[test]
    fn loom_kill_races_spawn() {
        loom::model(|| {
            let wakes = Arc::new(AtomicUsize::new(0));
            let slot = Arc::new(Mutex::new(KillSwitch::<Counted>::new()));
            let killer = {
                let slot = slot.clone();
                thread::spawn(move || {
                    let waker = slot.lock().kill();
                    if let Some(w) = waker {
                        w.wake();
                    }
                })
            };
            let saw_kill = slot.lock().register(|| Counted(wakes.clone()));
            killer.join().unwrap();
            assert_eq!(saw_kill as usize + wakes.load(SeqCst), 1);
        });
    }

    /// A kill while the task runs: the killer marks the switch, takes the
    /// waker, moves the epoch, then wakes; the task polls concurrently and,
    /// if woken, once more. Either poll sees the kill, never neither.
    #[test]
    fn loom_kill_races_a_poll() {
        use loom::sync::atomic::AtomicU64;

        /// One poll of the job's task: look at the entry if the epoch moved.
        fn poll(epoch: &AtomicU64, seen: &mut u64, slot: &Mutex<KillSwitch<Counted>>) -> bool {
            let now = epoch.load(SeqCst);
            if now == *seen {
                return false;
            }
            *seen = now;
            slot.lock().is_killed()
        }

        loom::model(|| {
            let wakes = Arc::new(AtomicUsize::new(0));
            let epoch = Arc::new(AtomicU64::new(0));
            let slot = Arc::new(Mutex::new(KillSwitch::<Counted>::new()));
            assert!(!slot.lock().register(|| Counted(wakes.clone())));
            let killer = {
                let (slot, epoch) = (slot.clone(), epoch.clone());
                thread::spawn(move || {
                    let waker = {
                        let mut switch = slot.lock();
                        let waker = switch.kill();
                        epoch.fetch_add(1, SeqCst);
                        waker
                    };
                    if let Some(w) = waker {
                        w.wake();
                    }
                })
            };
            let mut seen = 0;
            let mut killed = poll(&epoch, &mut seen, &slot);
            killer.join().unwrap();
            if !killed && wakes.load(SeqCst) > 0 {
                killed = poll(&epoch, &mut seen, &slot);
            }
            assert!(killed, "the kill was lost");
        });
    }
}
