//! The set of revoked task ids, bounded and expiring as Celery's
//! (`REVOKES_MAX` 50,000 ids, `REVOKE_EXPIRES` 3 hours).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::protocol::Timestamp;

/// Most ids kept; the oldest go first.
pub(crate) const MAX_IDS: usize = 50_000;
/// How long an id stays revoked.
pub(crate) const EXPIRES: Duration = Duration::from_secs(3 * 3600);

#[derive(Debug, Default)]
struct Inner {
    /// id -> unix seconds when it was revoked.
    at: HashMap<String, f64>,
    /// Insertion order, for expiry and the size bound; entries whose time
    /// no longer matches `at` are stale (the id was revoked again).
    order: VecDeque<(String, f64)>,
}

/// Revoked ids with their revocation times.
#[derive(Debug)]
pub(crate) struct RevokedSet {
    inner: Mutex<Inner>,
    max: usize,
    expires: Duration,
}

impl Default for RevokedSet {
    fn default() -> Self {
        RevokedSet::new(MAX_IDS, EXPIRES)
    }
}

impl RevokedSet {
    /// A set holding at most `max` ids for `expires` each.
    pub(crate) fn new(max: usize, expires: Duration) -> Self {
        RevokedSet {
            inner: Mutex::new(Inner::default()),
            max,
            expires,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Revokes `id` now.
    pub(crate) fn add(&self, id: &str) {
        self.add_at(id, Timestamp::now().unix_seconds());
    }

    /// Revokes `id` as of `at` (unix seconds), e.g. from another node's
    /// `hello` reply.
    pub(crate) fn add_at(&self, id: &str, at: f64) {
        let mut g = self.lock();
        g.at.insert(id.to_owned(), at);
        g.order.push_back((id.to_owned(), at));
        Self::purge_locked(
            &mut g,
            self.max,
            self.expires,
            Timestamp::now().unix_seconds(),
        );
    }

    /// Whether `id` is revoked (and not expired).
    pub(crate) fn contains(&self, id: &str) -> bool {
        let g = self.lock();
        match g.at.get(id) {
            Some(at) => Timestamp::now().unix_seconds() - at < self.expires.as_secs_f64(),
            None => false,
        }
    }

    /// The revoked ids with their times, expired ones dropped first.
    pub(crate) fn entries(&self) -> Vec<(String, f64)> {
        let mut g = self.lock();
        Self::purge_locked(
            &mut g,
            self.max,
            self.expires,
            Timestamp::now().unix_seconds(),
        );
        g.order
            .iter()
            .filter(|(id, at)| g.at.get(id) == Some(at))
            .cloned()
            .collect()
    }

    fn purge_locked(g: &mut Inner, max: usize, expires: Duration, now: f64) {
        let limit = expires.as_secs_f64();
        while let Some((id, at)) = g.order.front().cloned() {
            let current = g.at.get(&id) == Some(&at);
            if !current {
                g.order.pop_front();
            } else if g.at.len() > max || now - at >= limit {
                g.order.pop_front();
                g.at.remove(&id);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let s = RevokedSet::new(2, Duration::from_secs(3600));
        s.add("a");
        s.add("b");
        s.add("a");
        assert_eq!(s.entries().len(), 2);
        s.add("c");
        let ids: Vec<String> = s.entries().into_iter().map(|(i, _)| i).collect();
        assert_eq!(ids, ["a", "c"]);
        assert!(!s.contains("b"));
        s.add_at("old", Timestamp::now().unix_seconds() - 7200.0);
        let s2 = RevokedSet::new(10, Duration::from_secs(3600));
        s2.add_at("old", Timestamp::now().unix_seconds() - 7200.0);
        assert!(!s2.contains("old"));
        assert!(s2.entries().is_empty());
    }
}
