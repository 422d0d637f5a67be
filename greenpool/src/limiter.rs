//! The resizable concurrency limit: a semaphore plus a debt.
//!
//! A tokio [`Semaphore`] holds the free slots, so that waiting applies queue
//! fairly and wake when a slot frees. A job takes one permit when it is
//! admitted and `forget`s it at once; the slot is given back by
//! [`Limiter::release`] when the job ends.
//!
//! Shrinking cannot take permits away from jobs that are already running, so
//! whatever `shrink` cannot forget from the semaphore is recorded as *debt*,
//! paid off by the next slots to free (or by a later `grow`).
//!
//! # Invariants
//!
//! With `available` the semaphore's free permits, `running` the admitted jobs
//! and `admitting` the permits taken from the semaphore but not yet counted:
//!
//! * `available + running + admitting = limit + debt`;
//! * `free() = limit - running` (negative while the limit is in debt);
//! * a permit pays the debt, one unit, whenever it finds one: a freed slot
//!   before it goes back to the semaphore ([`Limiter::release`]), and a
//!   permit just taken from it before it admits a job ([`Limiter::admit`]).
//!   So no job is admitted while the limit is in debt.
//!
//! The debt is an atomic, so that releasing and admitting take no lock; the
//! lock orders `grow` and `shrink` only. Both sides look at the debt
//! because neither alone sees every shrink: a slot released just as a
//! shrink forgets the free permits and records its debt may reach the
//! semaphore unpaid, and is then caught by whoever takes it. A taker that
//! misses the debt too took the permit before the shrink recorded it, and
//! is admitted before the shrink in every respect: the shrink found no
//! permit to forget, which is also what it would have found after that
//! admission.
//!
//! [`Semaphore`]: tokio::sync::Semaphore

use std::sync::atomic::Ordering;

use crate::error::ResizeError;
use crate::loom::sync::{AtomicUsize, Mutex};

/// Where the free permits live: tokio's semaphore in the pool, a plain
/// counter in the loom models.
pub(crate) trait Permits {
    /// Returns `n` permits.
    fn add(&self, n: usize);
    /// Forgets up to `n` free permits; returns how many it forgot.
    fn forget(&self, n: usize) -> usize;
}

impl Permits for tokio::sync::Semaphore {
    #[inline]
    fn add(&self, n: usize) {
        self.add_permits(n);
    }

    fn forget(&self, n: usize) -> usize {
        self.forget_permits(n)
    }
}

/// The bookkeeping that the semaphore does not hold, as one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ledger {
    /// The current limit.
    pub(crate) limit: usize,
    /// Permits owed: slots that must not be handed out again when they free.
    pub(crate) debt: usize,
    /// Jobs admitted and not yet released.
    pub(crate) running: usize,
}

impl Ledger {
    /// Free slots; negative while more jobs run than the limit allows.
    pub(crate) fn free(&self) -> isize {
        to_isize(self.limit) - to_isize(self.running)
    }
}

fn to_isize(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

/// The resizable limit: a source of permits plus the [`Ledger`].
#[derive(Debug)]
pub(crate) struct Limiter<P> {
    /// The free permits.
    permits: P,
    /// The limit, changed only under this lock, which orders grow and
    /// shrink.
    limit: Mutex<usize>,
    /// Permits owed (see the invariants).
    debt: AtomicUsize,
    /// Jobs admitted and not yet released. Counted outside the lock so that
    /// admitting a job takes no lock; it is only ever read for reports.
    running: AtomicUsize,
    /// The largest limit `permits` can hold.
    max: usize,
}

impl<P: Permits> Limiter<P> {
    /// A limiter whose `permits` already hold `limit` permits.
    pub(crate) fn new(permits: P, limit: usize, max: usize) -> Self {
        Limiter {
            permits,
            limit: Mutex::new(limit),
            debt: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max,
        }
    }

    /// The permit source, for acquiring.
    #[inline]
    pub(crate) fn permits(&self) -> &P {
        &self.permits
    }

    /// A snapshot of limit, debt and running.
    pub(crate) fn ledger(&self) -> Ledger {
        let limit = self.limit.lock();
        self.ledger_at(*limit)
    }

    /// Like [`Limiter::ledger`], but `None` instead of waiting for the lock.
    pub(crate) fn try_ledger(&self) -> Option<Ledger> {
        let limit = self.limit.try_lock()?;
        Some(self.ledger_at(*limit))
    }

    fn ledger_at(&self, limit: usize) -> Ledger {
        Ledger {
            limit,
            debt: self.debt.load(Ordering::SeqCst),
            running: self.running.load(Ordering::Relaxed),
        }
    }

    /// Pays one unit of debt, if there is any; true if it did.
    #[inline]
    fn pay_debt(&self) -> bool {
        self.pay_debt_up_to(1) == 1
    }

    /// Pays up to `n` units of debt; returns how many it paid. No write
    /// when there is no debt (the usual case, on every release).
    #[inline]
    fn pay_debt_up_to(&self, n: usize) -> usize {
        let mut debt = self.debt.load(Ordering::SeqCst);
        while debt > 0 {
            let paid = debt.min(n);
            match self
                .debt
                .compare_exchange(debt, debt - paid, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return paid,
                Err(now) => debt = now,
            }
        }
        0
    }

    /// Counts a job whose permit was just taken from the semaphore (and
    /// forgotten, so that only [`Limiter::release`] gives it back) — unless
    /// the limit is in debt: then the permit pays one unit of it instead,
    /// and the caller, told `false`, asks the semaphore for another.
    ///
    /// No lock: between the semaphore handing out the permit and this count
    /// the permit is simply in flight (`admitting` in the invariant).
    #[inline]
    #[must_use = "false means the permit paid a debt and no job may start on it"]
    pub(crate) fn admit(&self) -> bool {
        if self.debt.load(Ordering::SeqCst) > 0 && self.pay_debt() {
            return false;
        }
        // SeqCst: the pool's state check after admission and `stop`'s check
        // of this count after closing must not both miss each other.
        self.running.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Jobs admitted and not yet released.
    #[inline]
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Gives back the slot of a job that ended: to the debt if there is one,
    /// else to the semaphore.
    #[inline]
    pub(crate) fn release(&self) {
        let was = self.running.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(was > 0, "release without a matching admit");
        if !self.pay_debt() {
            self.permits.add(1);
        }
    }

    /// Raises the limit by `n`, paying any debt first.
    pub(crate) fn grow(&self, n: usize) -> Result<usize, ResizeError> {
        let mut limit = self.limit.lock();
        let grown =
            limit
                .checked_add(n)
                .filter(|l| *l <= self.max)
                .ok_or(ResizeError::TooLarge {
                    by: n,
                    limit: *limit,
                    max: self.max,
                })?;
        let paid = self.pay_debt_up_to(n);
        *limit = grown;
        if n > paid {
            self.permits.add(n - paid);
        }
        Ok(grown)
    }

    /// Lowers the limit by `n`; running jobs are never interrupted.
    pub(crate) fn shrink(&self, n: usize) -> Result<usize, ResizeError> {
        let mut limit = self.limit.lock();
        if n > *limit {
            return Err(ResizeError::BelowZero {
                by: n,
                limit: *limit,
            });
        }
        let forgotten = self.permits.forget(n);
        self.debt.fetch_add(n - forgotten, Ordering::SeqCst);
        *limit -= n;
        Ok(*limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    fn limiter(limit: usize) -> Limiter<Semaphore> {
        Limiter::new(Semaphore::new(limit), limit, Semaphore::MAX_PERMITS)
    }

    /// Admits a job as the pool does: permits that pay a debt are taken
    /// until one admits or none is left.
    fn admit(l: &Limiter<Semaphore>) -> bool {
        while let Ok(p) = l.permits().try_acquire() {
            p.forget();
            if l.admit() {
                return true;
            }
        }
        false
    }

    fn check(l: &Limiter<Semaphore>, case: &str) {
        let ledger = l.ledger();
        assert_eq!(
            l.permits().available_permits() + ledger.running,
            ledger.limit + ledger.debt,
            "{case}: available + running = limit + debt"
        );
        assert!(
            ledger.debt == 0 || l.permits().available_permits() == 0,
            "{case}: debt only while nothing is available"
        );
    }

    /// Every limit × running × shrink combination up to 4, then releases.
    #[test]
    fn shrink_every_combination() {
        for limit in 0..=4 {
            for running in 0..=limit {
                for by in 0..=5 {
                    let case = format!("limit {limit}, running {running}, shrink {by}");
                    let l = limiter(limit);
                    for _ in 0..running {
                        assert!(admit(&l), "{case}: admit");
                    }
                    let res = l.shrink(by);
                    if by > limit {
                        assert!(res.is_err(), "{case}: must fail");
                        assert_eq!(l.ledger().limit, limit, "{case}: unchanged");
                        check(&l, &case);
                        continue;
                    }
                    assert_eq!(res.ok(), Some(limit - by), "{case}");
                    check(&l, &case);
                    let new_limit = limit - by;
                    let expect_free = new_limit as isize - running as isize;
                    assert_eq!(l.ledger().free(), expect_free, "{case}: free");
                    // Nothing starts while in debt.
                    if expect_free <= 0 {
                        assert!(!admit(&l), "{case}: admitted while full");
                    }
                    for _ in 0..running {
                        l.release();
                        check(&l, &case);
                    }
                    assert_eq!(l.ledger().debt, 0, "{case}: debt paid");
                    assert_eq!(
                        l.permits().available_permits(),
                        new_limit,
                        "{case}: all slots back"
                    );
                }
            }
        }
    }

    #[test]
    fn grow_pays_debt_first() {
        let l = limiter(2);
        assert!(admit(&l));
        assert!(admit(&l));
        l.shrink(2).unwrap();
        assert_eq!(l.ledger().debt, 2);
        assert_eq!(l.grow(1).unwrap(), 1);
        assert_eq!(l.ledger().debt, 1);
        assert_eq!(l.permits().available_permits(), 0);
        assert_eq!(l.grow(2).unwrap(), 3);
        assert_eq!(l.ledger().debt, 0);
        assert_eq!(l.permits().available_permits(), 1);
        check(&l, "grow");
    }

    #[test]
    fn grow_past_max_is_an_error() {
        let l = Limiter::new(Semaphore::new(1), 1, 4);
        assert!(l.grow(4).is_err());
        assert_eq!(l.ledger().limit, 1);
        assert_eq!(l.grow(3).unwrap(), 4);
    }
}

#[cfg(all(test, loom))]
mod loom_limiter {
    use super::*;
    use crate::loom::sync::AtomicUsize;
    use loom::sync::atomic::Ordering::SeqCst;
    use loom::sync::Arc;
    use loom::thread;

    /// A semaphore reduced to its counter: enough for the bookkeeping.
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
        fn get(&self) -> usize {
            self.0.load(SeqCst)
        }
    }

    impl Permits for Counter {
        #[inline]
        fn add(&self, n: usize) {
            self.0.fetch_add(n, SeqCst);
        }
        fn forget(&self, n: usize) -> usize {
            let mut cur = self.0.load(SeqCst);
            loop {
                let take = cur.min(n);
                match self.0.compare_exchange(cur, cur - take, SeqCst, SeqCst) {
                    Ok(_) => return take,
                    Err(now) => cur = now,
                }
            }
        }
    }

    fn new(limit: usize) -> Arc<Limiter<Counter>> {
        Arc::new(Limiter::new(
            Counter(AtomicUsize::new(limit)),
            limit,
            usize::MAX,
        ))
    }

    fn admit(l: &Limiter<Counter>) -> bool {
        while l.permits().try_take() {
            if l.admit() {
                return true;
            }
        }
        false
    }

    /// The totals add up, and a job can start exactly when the limit leaves
    /// room for one: taking permits until one admits (or none is left)
    /// admits only while `free > 0` (that job is released again), and
    /// leaves no debt beside a free permit.
    fn settled(l: &Limiter<Counter>) {
        let ledger = l.ledger();
        assert_eq!(
            l.permits().get() + ledger.running,
            ledger.limit + ledger.debt
        );
        let free = ledger.free();
        let admitted = admit(l);
        assert_eq!(admitted, free > 0, "admission with {free} free");
        if admitted {
            l.release();
        }
        let ledger = l.ledger();
        assert!(ledger.debt == 0 || l.permits().get() == 0);
    }

    /// A job finishing while the limit shrinks under it: the shrink holds.
    #[test]
    fn loom_release_races_shrink() {
        loom::model(|| {
            let l = new(1);
            assert!(admit(&l));
            let a = {
                let l = l.clone();
                thread::spawn(move || l.release())
            };
            let b = {
                let l = l.clone();
                thread::spawn(move || l.shrink(1).is_ok())
            };
            a.join().unwrap();
            assert!(b.join().unwrap());
            let ledger = l.ledger();
            assert_eq!(ledger.limit, 0);
            assert_eq!(ledger.running, 0);
            // The freed slot is not handed out: it paid the debt, or it
            // pays it when taken.
            settled(&l);
            assert_eq!(l.permits().get(), 0);
            assert_eq!(l.ledger().debt, 0);
        });
    }

    /// A waiter takes a slot while another job ends and the limit shrinks.
    #[test]
    fn loom_admit_release_shrink() {
        loom::model(|| {
            let l = new(2);
            assert!(admit(&l));
            assert!(admit(&l));
            let releaser = {
                let l = l.clone();
                thread::spawn(move || l.release())
            };
            let shrinker = {
                let l = l.clone();
                thread::spawn(move || l.shrink(1).is_ok())
            };
            let got = admit(&l);
            releaser.join().unwrap();
            assert!(shrinker.join().unwrap());
            settled(&l);
            let ledger = l.ledger();
            assert_eq!(ledger.limit, 1);
            assert_eq!(ledger.running, if got { 2 } else { 1 });
            assert!(ledger.free() >= -1);
        });
    }

    /// grow and shrink in parallel with a release end at the same totals.
    #[test]
    fn loom_grow_shrink_release() {
        loom::model(|| {
            let l = new(1);
            assert!(admit(&l));
            let g = {
                let l = l.clone();
                thread::spawn(move || l.grow(1).is_ok())
            };
            let s = {
                let l = l.clone();
                thread::spawn(move || l.shrink(1).is_ok())
            };
            l.release();
            assert!(g.join().unwrap());
            let shrunk = s.join().unwrap();
            settled(&l);
            let ledger = l.ledger();
            assert_eq!(ledger.running, 0);
            assert_eq!(ledger.debt, 0);
            assert_eq!(ledger.limit, if shrunk { 1 } else { 2 });
            assert_eq!(l.permits().get(), ledger.limit);
        });
    }
}
