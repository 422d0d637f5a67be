//! Loom model of the admission protocol: an apply racing `close`, `stop`
//! and a killer, with the real [`Limiter`] and the pool's order of steps
//! (slot, map entry, state check; state, then count). The map, the state
//! and the job's end are reduced to loom's types.
//!
//! Checked in every interleaving: the killer always returns (loom reports a
//! deadlock otherwise: before the refusal told waiting killers, this one
//! waited forever), `stop` returns only after an admitted job ended, and
//! the slot count comes back to zero.
//!
//! The pool orders "count, then read the state" (apply) against "write the
//! state, then read the count" (close/stop) with `SeqCst` on both sides,
//! which the memory model makes a single total order. Loom treats `SeqCst`
//! accesses as acquire/release but models `SeqCst` fences, so the model
//! states that order with a fence on each side.

use loom::sync::atomic::Ordering::SeqCst;
use loom::sync::atomic::{fence, AtomicU8};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use crate::limiter::{Limiter, Permits};
use crate::loom::sync::AtomicUsize;

const RUN: u8 = 1;
const CLOSE: u8 = 2;

/// The permits, as a counter.
#[derive(Debug)]
struct Counter(AtomicUsize);

impl Counter {
    fn try_take(&self) -> bool {
        let mut cur = self.0.load(SeqCst);
        loop {
            if cur == 0 {
                return false;
            }
            match self.0.compare_exchange(cur, cur - 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

impl Permits for Counter {
    fn add(&self, n: usize) {
        self.0.fetch_add(n, SeqCst);
    }
    fn forget(&self, n: usize) -> usize {
        let cur = self.0.load(SeqCst);
        let take = cur.min(n);
        self.0.fetch_sub(take, SeqCst);
        take
    }
}

/// The job's end as its killers see it.
#[derive(Default)]
struct Cell {
    end: Mutex<Option<bool>>,
    ended: Condvar,
}

impl Cell {
    fn finish(&self, refused: bool) {
        *self.end.lock().unwrap() = Some(refused);
        self.ended.notify_all();
    }
    fn wait(&self) -> bool {
        let mut end = self.end.lock().unwrap();
        loop {
            if let Some(refused) = *end {
                return refused;
            }
            end = self.ended.wait(end).unwrap();
        }
    }
}

struct Pool {
    state: AtomicU8,
    limiter: Limiter<Counter>,
    /// The job map, for one job.
    map: Mutex<Option<Arc<Cell>>>,
    /// Set by the job when it ran to its end.
    ran: AtomicU8,
}

impl Pool {
    /// `admit` of `apply.rs` and the guard's end; true if admitted.
    fn apply(&self) -> bool {
        if self.state.load(SeqCst) != RUN || !self.limiter.permits().try_take() {
            return false;
        }
        if !self.limiter.admit() {
            // The permit paid a debt (none here: the model never shrinks).
            return false;
        }
        let cell = Arc::new(Cell::default());
        *self.map.lock().unwrap() = Some(cell.clone());
        fence(SeqCst);
        if self.state.load(SeqCst) != RUN {
            self.map.lock().unwrap().take();
            cell.finish(true);
            self.limiter.release();
            return false;
        }
        // The job runs and ends: callback, killers, map entry, slot.
        self.ran.store(1, SeqCst);
        cell.finish(false);
        self.map.lock().unwrap().take();
        self.limiter.release();
        true
    }

    /// `close` then `stop`'s wait for the count.
    fn stop(&self) {
        self.state.store(CLOSE, SeqCst);
        fence(SeqCst);
        while self.limiter.running() != 0 {
            thread::yield_now();
        }
    }

    /// `terminate_job`: finds the job in the map and waits for its end.
    fn kill(&self) -> Option<bool> {
        let cell = self.map.lock().unwrap().clone();
        cell.map(|c| c.wait())
    }
}

#[test]
fn loom_apply_races_close() {
    loom::model(|| {
        let pool = Arc::new(Pool {
            state: AtomicU8::new(RUN),
            limiter: Limiter::new(Counter(AtomicUsize::new(1)), 1, usize::MAX),
            map: Mutex::new(None),
            ran: AtomicU8::new(0),
        });
        let applier = {
            let p = pool.clone();
            thread::spawn(move || p.apply())
        };
        let killer = {
            let p = pool.clone();
            thread::spawn(move || p.kill())
        };
        pool.stop();
        // `stop` returned: an admitted job has ended by now.
        let ran_at_stop = pool.ran.load(SeqCst);
        let admitted = applier.join().unwrap();
        let killed = killer.join().unwrap();
        assert_eq!(
            ran_at_stop == 1,
            admitted,
            "stop returned before the job ended"
        );
        if let Some(refused) = killed {
            assert_eq!(refused, !admitted);
        }
        assert_eq!(pool.limiter.running(), 0);
        assert!(pool.map.lock().unwrap().is_none());
    });
}
