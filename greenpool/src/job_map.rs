//! The job map: `JobId` → the job's entry, sharded by id.
//!
//! Ids are handed out in order, so neighbouring jobs land in different
//! shards: the task applying job *n* and the task ending job *n - k* rarely
//! want the same lock. Each entry is all the pool keeps of a job outside
//! its task: the [`KillSwitch`] (a hard kill, and the task's waker once it
//! waited), the first kill request (what the terminated outcome says), the
//! job's cancellation token (made on first use), and the notifier of its
//! killers (made by the first one). A job's outcome travels in its task's
//! own output, so there is no other per-job allocation.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use std::task::Waker;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache_padded::CachePadded;
use crate::job_id::JobId;
use crate::kill_switch::KillSwitch;
use crate::outcome::Termination;

/// Number of shards; a power of two.
const SHARDS: usize = 16;

/// The most entries the shards reserve room for up front, in all.
const MAX_RESERVED: usize = 1 << 20;

/// How a job ended, as its killers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum End {
    /// It ended with its own outcome (completed or panicked).
    Exited = 1,
    /// It ended terminated.
    Killed = 2,
    /// It was never admitted: a `close` raced its apply.
    Refused = 3,
}

/// What the killers of one job wait on.
#[derive(Debug, Default)]
pub(crate) struct Killers {
    pub(crate) ended: Notify,
    end: AtomicU8,
}

impl Killers {
    /// Records the end and wakes every killer.
    pub(crate) fn finish(&self, end: End) {
        self.end.store(end as u8, Ordering::SeqCst);
        self.ended.notify_waiters();
    }

    /// How the job ended, if it did.
    pub(crate) fn end(&self) -> Option<End> {
        match self.end.load(Ordering::SeqCst) {
            1 => Some(End::Exited),
            2 => Some(End::Killed),
            3 => Some(End::Refused),
            _ => None,
        }
    }
}

/// A kill request, with the killers waiting for it: boxed in the entry,
/// since most jobs never get one.
#[derive(Debug)]
pub(crate) struct Kill {
    /// The first request: what the terminated outcome says.
    pub(crate) termination: Termination,
    /// The job's killers, once one waits.
    pub(crate) killers: Option<Arc<Killers>>,
}

/// A job's entry.
pub(crate) struct Slot {
    /// Hard kills, and the task's waker once it waited.
    pub(crate) switch: KillSwitch<Waker>,
    /// The job's token, once somebody asked for it.
    pub(crate) token: Option<CancellationToken>,
    /// The first kill request and the killers, once there is one.
    pub(crate) kill: Option<Box<Kill>>,
}

impl Slot {
    #[inline]
    pub(crate) fn new() -> Self {
        Slot {
            switch: KillSwitch::new(),
            token: None,
            kill: None,
        }
    }

    /// Records a kill request (the first one wins) and returns it.
    pub(crate) fn request_kill(&mut self, termination: Termination) -> &mut Kill {
        self.kill.get_or_insert_with(|| {
            Box::new(Kill {
                termination,
                killers: None,
            })
        })
    }

    /// The kill request, if any.
    pub(crate) fn termination(&self) -> Option<Termination> {
        self.kill.as_ref().map(|k| k.termination)
    }

    /// The killers of a job that is leaving the map.
    #[inline(always)]
    pub(crate) fn into_killers(self) -> Option<Arc<Killers>> {
        self.kill.and_then(|k| k.killers)
    }

    /// The job's token, made on first use.
    pub(crate) fn token(&mut self) -> CancellationToken {
        self.token
            .get_or_insert_with(CancellationToken::new)
            .clone()
    }
}

impl Kill {
    /// The job's killers, made on first use.
    pub(crate) fn killers(&mut self) -> Arc<Killers> {
        Arc::clone(self.killers.get_or_insert_with(Default::default))
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("kill", &self.termination())
            .field("hard", &self.switch.is_killed())
            .finish_non_exhaustive()
    }
}

/// Hashes ids, which are already unique integers, keeping their order.
///
/// hashbrown picks a key's bucket from the low bits of its hash and a
/// one-byte tag from the top seven. The low bits here follow the id's place
/// in its shard (`id / SHARDS`), so that jobs applied one after the other
/// sit in neighbouring buckets: a run of applies, or of jobs first waiting
/// or ending in turn, walks the table in order instead of touching a new
/// cache line and page per job (which, with a million parked jobs, is most
/// of what the map costs). One bucket in every nine is skipped: jobs
/// mostly end in the order they came, and hashbrown must leave a tombstone
/// for a removed key inside a run of sixteen or more taken buckets, which a
/// gap-free run would produce at every removal (and, with them, a rehash
/// every few dozen inserts). The top seven bits are a multiplicative mix of
/// the id's place in its shard, so that tags still tell neighbours apart.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// The bits of a hash that hashbrown uses as the tag.
const TAG_BITS: u64 = 0x7F << 57;

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        let in_shard = n >> SHARDS.trailing_zeros();
        // Eight taken buckets, then a gap (no overflow: `in_shard` is
        // below 2^60).
        let bucket = in_shard + (in_shard >> 3);
        // Fibonacci hashing: neighbouring ids get tags spread over the
        // whole byte, so the ids sharing a probe group rarely share one.
        self.0 = bucket ^ (in_shard.wrapping_mul(0x9E37_79B9_7F4A_7C15) & TAG_BITS);
    }
}

/// Where an id's entry sits in its shard's table (see [`IdHasher`]).
#[inline]
fn hash(id: JobId) -> u64 {
    let mut h = IdHasher::default();
    h.write_u64(id.0);
    h.finish()
}

/// One shard: a hash table of entries by id.
///
/// A `hashbrown` table rather than a `HashMap`: ids are unique, so an
/// entry goes in without first looking for one with the same id.
#[derive(Default)]
pub(crate) struct Shard {
    table: HashTable<(JobId, Slot)>,
}

impl Shard {
    fn with_capacity(n: usize) -> Self {
        Shard {
            table: HashTable::with_capacity(n),
        }
    }

    /// Puts in the entry of a new job. Ids are never reused, so there is no
    /// entry for `id` yet (checked in debug builds).
    #[inline]
    pub(crate) fn insert(&mut self, id: JobId, slot: Slot) {
        debug_assert!(self.get(&id).is_none(), "{id} is already in the map");
        self.table
            .insert_unique(hash(id), (id, slot), |(k, _)| hash(*k));
    }

    /// The entry of `id`, if it is in the map.
    #[inline]
    pub(crate) fn get(&self, id: &JobId) -> Option<&Slot> {
        self.table
            .find(hash(*id), |(k, _)| k == id)
            .map(|(_, slot)| slot)
    }

    /// The entry of `id`, if it is in the map, to change.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: &JobId) -> Option<&mut Slot> {
        self.table
            .find_mut(hash(*id), |(k, _)| k == id)
            .map(|(_, slot)| slot)
    }

    /// Takes the entry of `id` out of the map.
    #[inline]
    pub(crate) fn remove(&mut self, id: &JobId) -> Option<Slot> {
        match self.table.find_entry(hash(*id), |(k, _)| k == id) {
            Ok(entry) => Some(entry.remove().0 .1),
            Err(_) => None,
        }
    }

    /// Every entry, to change.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.table.iter_mut().map(|(_, slot)| slot)
    }

    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("len", &self.len()).finish()
    }
}

/// The sharded map.
#[derive(Debug)]
pub(crate) struct JobMap {
    /// Each on lines of its own: the thread applying a job and the one
    /// ending another lock neighbouring shards at the same time.
    shards: Box<[CachePadded<Mutex<Shard>>]>,
}

impl JobMap {
    /// A map with room for `limit` jobs reserved (up to a cap), so that a
    /// pool with a large limit does not rehash its shards as it fills.
    pub(crate) fn new(limit: usize) -> Self {
        let per_shard = limit.min(MAX_RESERVED) / SHARDS;
        JobMap {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(Shard::with_capacity(per_shard))))
                .collect(),
        }
    }

    /// The shard that holds `id`, locked.
    #[inline]
    pub(crate) fn shard(&self, id: JobId) -> MutexGuard<'_, Shard> {
        let i = (id.0 as usize) & (SHARDS - 1);
        self.shards[i].lock()
    }

    /// Applies a kill to every entry, a shard at a time; returns the wakers
    /// it handed back, to be woken once the locks are released.
    pub(crate) fn kill_all(&self, mut f: impl FnMut(&mut Slot) -> Option<Waker>) -> Vec<Waker> {
        let mut wakers = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            wakers.extend(shard.values_mut().filter_map(&mut f));
        }
        wakers
    }

    /// How many jobs are in the map.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(id: u64) -> u64 {
        super::hash(JobId(id))
    }

    /// Ids of one shard, applied in turn, land in neighbouring buckets, with
    /// a gap after every eight; their tags (the top seven bits) differ.
    #[test]
    fn ids_of_a_shard_keep_their_order_and_get_mixed_tags() {
        let ids: Vec<u64> = (0..64u64).map(|k| 3 + k * SHARDS as u64).collect();
        let low = |h: u64| h & !TAG_BITS;
        let steps: Vec<u64> = ids
            .windows(2)
            .map(|pair| low(hash(pair[1])) - low(hash(pair[0])))
            .collect();
        assert!(steps.iter().all(|&d| d == 1 || d == 2), "{steps:?}");
        for run in steps.windows(8) {
            assert!(run.contains(&2), "no gap in nine buckets: {steps:?}");
        }
        // The largest ids hash without overflow.
        let _ = hash(u64::MAX);
        // Any 16 neighbours (a probe group) have 16 different tags.
        for group in ids.windows(16) {
            let tags: std::collections::HashSet<u64> =
                group.iter().map(|&i| hash(i) >> 57).collect();
            assert_eq!(tags.len(), 16, "neighbours share a tag");
        }
    }

    #[test]
    fn a_shard_finds_what_it_holds() {
        let map = JobMap::new(4);
        for id in 1..=1000u64 {
            map.shard(JobId(id)).insert(JobId(id), Slot::new());
        }
        assert_eq!(map.len(), 1000);
        for id in (1..=1000u64).step_by(7) {
            assert!(map.shard(JobId(id)).remove(&JobId(id)).is_some());
            assert!(map.shard(JobId(id)).get(&JobId(id)).is_none());
        }
        assert!(map.shard(JobId(2)).get(&JobId(2)).is_some());
    }
}
