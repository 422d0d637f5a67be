//! Random operation sequences against a reference model.
//!
//! Each case runs on a fresh current-thread runtime. After every operation
//! the runtime is allowed to settle (yield until nothing moves) and the pool
//! is compared with the model: limit, running, waiting, free = limit -
//! running, no idle slot while applies wait. At the end: exactly one
//! callback per admitted job with the kind the model expects, and an empty
//! job map.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use greenpool::{ApplyError, Job, JobId, KillResult, Outcome, TaskPool};
use proptest::prelude::*;
use support::Gate;

#[derive(Debug, Clone)]
enum Op {
    /// A job that parks until released (waits for a slot if need be).
    ApplyBlocking,
    /// A job that returns at once (try_apply: refused when full).
    ApplyQuick,
    /// A job that panics (try_apply).
    ApplyPanic,
    Grow(u8),
    Shrink(u8),
    /// Kill the n-th admitted job.
    Kill(usize),
    /// Let the n-th admitted job finish.
    Release(usize),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::ApplyBlocking),
        3 => Just(Op::ApplyQuick),
        1 => Just(Op::ApplyPanic),
        2 => (0u8..3).prop_map(Op::Grow),
        2 => (0u8..4).prop_map(Op::Shrink),
        2 => any::<usize>().prop_map(Op::Kill),
        3 => any::<usize>().prop_map(Op::Release),
        1 => Just(Op::Close),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completed,
    Panicked,
    Terminated,
}

#[derive(Debug, Default)]
struct Model {
    limit: usize,
    /// Admitted blocking jobs still running, by model index.
    running: Vec<usize>,
    /// Blocking applies waiting for a slot, in order.
    backlog: Vec<usize>,
    closed: bool,
    /// What each admitted job must end with.
    expect: HashMap<usize, Kind>,
}

impl Model {
    fn free(&self) -> isize {
        self.limit as isize - self.running.len() as isize
    }
    /// Admits waiting applies while slots are free.
    fn settle(&mut self) {
        while !self.backlog.is_empty() && self.free() > 0 {
            let j = self.backlog.remove(0);
            self.running.push(j);
            self.expect.insert(j, Kind::Completed);
        }
    }
}

/// What the pool side records.
#[derive(Default)]
struct Seen {
    callbacks: Mutex<HashMap<usize, Vec<Kind>>>,
    ids: Mutex<HashMap<usize, JobId>>,
    gates: Mutex<HashMap<usize, Gate>>,
}

fn kind<T>(o: &Outcome<T>) -> Kind {
    match o {
        Outcome::Completed(_) => Kind::Completed,
        Outcome::Panicked(_) => Kind::Panicked,
        Outcome::Terminated(_) => Kind::Terminated,
    }
}

fn record(seen: &Arc<Seen>, j: usize) -> impl FnOnce(&Outcome<()>) + Send + 'static {
    let seen = seen.clone();
    move |o| {
        seen.callbacks
            .lock()
            .unwrap()
            .entry(j)
            .or_default()
            .push(kind(o))
    }
}

/// Yields until the pool's counters stop moving.
async fn settle(pool: &TaskPool) {
    let snapshot = |p: &TaskPool| {
        let i = p.info();
        (
            i.applied,
            i.completed,
            i.panicked,
            i.terminated,
            i.waiting,
            i.running_threads,
            p.job_count(),
        )
    };
    let mut last = snapshot(pool);
    let mut still = 0;
    for _ in 0..10_000 {
        tokio::task::yield_now().await;
        let now = snapshot(pool);
        if now == last {
            still += 1;
            if still >= 3 {
                return;
            }
        } else {
            still = 0;
            last = now;
        }
    }
    panic!("the pool did not settle");
}

async fn run(limit: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let pool = TaskPool::builder().limit(limit as i64).build().unwrap();
    pool.start().unwrap();
    let seen = Arc::new(Seen::default());
    let mut m = Model {
        limit,
        ..Model::default()
    };
    let mut next = 0usize;
    let mut admitted: Vec<usize> = Vec::new();

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::ApplyBlocking => {
                let j = next;
                next += 1;
                let gate = Gate::new();
                seen.gates.lock().unwrap().insert(j, gate.clone());
                let job = Job::new(move |_ctx| async move { gate.wait().await })
                    .callback(record(&seen, j));
                let p = pool.clone();
                let s = seen.clone();
                tokio::spawn(async move {
                    if let Ok(h) = p.apply_async(job).await {
                        s.ids.lock().unwrap().insert(j, h.id());
                    }
                });
                if !m.closed {
                    m.backlog.push(j);
                }
            }
            Op::ApplyQuick | Op::ApplyPanic => {
                let j = next;
                next += 1;
                let panics = matches!(op, Op::ApplyPanic);
                let job = Job::new(move |_ctx| async move {
                    if panics {
                        panic!("job {j} panics");
                    }
                })
                .callback(record(&seen, j));
                let res = pool.try_apply_async(job);
                let want_ok = !m.closed && m.free() > 0;
                prop_assert_eq!(res.is_ok(), want_ok, "step {}: try_apply", step);
                match res {
                    Ok(h) => {
                        seen.ids.lock().unwrap().insert(j, h.id());
                        m.expect.insert(
                            j,
                            if panics {
                                Kind::Panicked
                            } else {
                                Kind::Completed
                            },
                        );
                        admitted.push(j);
                    }
                    Err(ApplyError::Full(_)) => prop_assert!(!m.closed),
                    Err(_) => prop_assert!(m.closed),
                }
            }
            Op::Grow(n) => {
                prop_assert_eq!(pool.grow(n as usize), Ok(m.limit + n as usize));
                m.limit += n as usize;
            }
            Op::Shrink(n) => {
                let n = n as usize;
                let r = pool.shrink(n);
                if n > m.limit {
                    prop_assert!(r.is_err());
                } else {
                    prop_assert_eq!(r, Ok(m.limit - n));
                    m.limit -= n;
                }
            }
            Op::Kill(i) | Op::Release(i) => {
                let ids = seen.ids.lock().unwrap().clone();
                if ids.is_empty() {
                    continue;
                }
                let mut keys: Vec<_> = ids.keys().copied().collect();
                keys.sort_unstable();
                let j = keys[i % keys.len()];
                let alive = m.running.contains(&j);
                if matches!(op, Op::Kill(_)) {
                    let r = pool.terminate_job(ids[&j], None).await;
                    let want = if alive {
                        KillResult::Killed
                    } else {
                        KillResult::AlreadyFinished
                    };
                    prop_assert_eq!(r, want, "step {}: kill job {}", step, j);
                    if alive {
                        m.expect.insert(j, Kind::Terminated);
                    }
                } else if let Some(g) = seen.gates.lock().unwrap().get(&j) {
                    g.open();
                }
                if alive {
                    m.running.retain(|x| *x != j);
                }
            }
            Op::Close => {
                pool.close();
                m.closed = true;
                m.backlog.clear();
            }
        }
        m.settle();
        settle(&pool).await;
        let info = pool.info();
        prop_assert_eq!(pool.limit(), m.limit, "step {}: limit", step);
        prop_assert_eq!(
            info.running_threads,
            m.running.len(),
            "step {}: running",
            step
        );
        prop_assert_eq!(info.waiting, m.backlog.len(), "step {}: waiting", step);
        prop_assert_eq!(info.free_threads, m.free(), "step {}: free", step);
        prop_assert_eq!(
            info.free_threads,
            info.max_concurrency as isize - info.running_threads as isize
        );
        if !m.backlog.is_empty() {
            prop_assert!(
                info.free_threads <= 0,
                "step {}: a slot idles while applies wait",
                step
            );
        }
        prop_assert_eq!(pool.job_count(), m.running.len(), "step {}: job map", step);
        for (j, calls) in seen.callbacks.lock().unwrap().iter() {
            prop_assert_eq!(calls.len(), 1, "job {} got {:?}", j, calls);
        }
    }

    // Drain: let every parked job finish, then stop.
    for g in seen.gates.lock().unwrap().values() {
        g.open();
    }
    if !m.closed {
        m.limit = m.limit.max(1);
        if pool.limit() == 0 {
            pool.grow(1).unwrap();
        }
        // Backlogged jobs will be admitted and complete.
        for j in m.backlog.drain(..) {
            m.expect.insert(j, Kind::Completed);
        }
    }
    settle(&pool).await;
    pool.stop().await.unwrap();
    prop_assert_eq!(pool.job_count(), 0);
    prop_assert_eq!(pool.running(), 0);
    let calls = seen.callbacks.lock().unwrap();
    for (j, want) in &m.expect {
        prop_assert_eq!(
            calls.get(j).map(Vec::as_slice),
            Some(&[*want][..]),
            "job {}",
            j
        );
    }
    prop_assert_eq!(
        calls.len(),
        m.expect.len(),
        "callbacks only for admitted jobs"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_the_model(limit in 0usize..4, ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(limit, ops))?;
    }
}
