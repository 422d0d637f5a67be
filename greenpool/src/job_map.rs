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

/// Where an id sits in its shard: its place among the shard's ids (ids are
/// handed out in order and dealt to the shards in turn).
#[inline]
fn place(id: JobId) -> usize {
    // Truncation on 32-bit targets only folds far-apart ids together, which
    // the ring tells apart by the id it keeps.
    (id.0 >> SHARDS.trailing_zeros()) as usize
}

/// The spill's hash: a multiplicative mix of the id's place, folded so that
/// both the low bits (the bucket) and the top seven (the tag) vary.
#[inline]
fn spill_hash(id: JobId) -> u64 {
    let h = (id.0 >> SHARDS.trailing_zeros()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// One shard: a ring of entries indexed by the id's place, and a spill
/// table for the few that find their place taken.
///
/// Jobs mostly end in about the order they came, so the ids alive at one
/// time form a window a little wider than the limit: with a ring as long
/// as that window, each id has its own place (`place(id)` modulo the
/// length), found without hashing or probing, and applying and ending a
/// job walk the ring in order. A job that outlives a full turn of the ring
/// keeps its place, and a newer id that comes to it goes to the spill, a
/// hash table. When the spill holds a sixteenth of the ring while the ring
/// is at least half full, the ring doubles: each entry stays or moves half
/// the new length on, and the spilled ones are placed again.
///
/// The room a shard reserves (see [`JobMap::new`]) is allocated up front
/// but written, and so made resident, only as the ring grows into it.
pub(crate) struct Shard {
    /// `ring[place(id) & (len - 1)]`; the length is a power of two.
    ring: Vec<Option<(JobId, Slot)>>,
    /// How many entries the ring holds.
    in_ring: usize,
    /// Entries whose place in the ring was taken.
    spill: HashTable<(JobId, Slot)>,
}

impl Shard {
    /// A shard with room reserved for a window of `n` ids.
    fn with_capacity(n: usize) -> Self {
        let reserved = n.max(MIN_RING).next_power_of_two();
        let mut ring = Vec::with_capacity(reserved);
        ring.resize_with(reserved.min(FIRST_RING), || None);
        Shard {
            ring,
            in_ring: 0,
            spill: HashTable::new(),
        }
    }

    #[inline]
    fn index(&self, id: JobId) -> usize {
        place(id) & (self.ring.len() - 1)
    }

    /// Puts in the entry of a new job. Ids are never reused, so there is no
    /// entry for `id` yet (checked in debug builds).
    #[inline]
    pub(crate) fn insert(&mut self, id: JobId, slot: Slot) {
        debug_assert!(self.get(&id).is_none(), "{id} is already in the map");
        let i = self.index(id);
        match &mut self.ring[i] {
            place @ None => {
                *place = Some((id, slot));
                self.in_ring += 1;
            }
            Some(_) => self.insert_cold(id, slot),
        }
    }

    /// The place of `id` was taken: grows the ring if the spill is getting
    /// large, and puts the entry wherever it then fits.
    #[cold]
    #[inline(never)]
    fn insert_cold(&mut self, id: JobId, slot: Slot) {
        let len = self.ring.len();
        if self.spill.len() >= len / 16 && self.len() >= len / 2 {
            self.grow();
        }
        self.place_or_spill(id, slot);
    }

    /// Puts an entry in its place in the ring if that is free, else in the
    /// spill.
    fn place_or_spill(&mut self, id: JobId, slot: Slot) {
        let i = self.index(id);
        if self.ring[i].is_none() {
            self.ring[i] = Some((id, slot));
            self.in_ring += 1;
        } else {
            self.spill
                .insert_unique(spill_hash(id), (id, slot), |(k, _)| spill_hash(*k));
        }
    }

    /// Doubles the ring, within the room reserved if it can.
    fn grow(&mut self) {
        let half = self.ring.len();
        self.ring.resize_with(half * 2, || None);
        // In the doubled ring an entry's place is where it was, or `half`
        // further on (which is free): one more bit of its place counts.
        for i in 0..half {
            if self.ring[i]
                .as_ref()
                .is_some_and(|(id, _)| place(*id) & half != 0)
            {
                let entry = self.ring[i].take();
                self.ring[i + half] = entry;
            }
        }
        for (id, slot) in std::mem::take(&mut self.spill) {
            self.place_or_spill(id, slot);
        }
    }

    /// The entry of `id`, if it is in the map.
    #[inline]
    pub(crate) fn get(&self, id: &JobId) -> Option<&Slot> {
        match &self.ring[self.index(*id)] {
            Some((k, slot)) if k == id => Some(slot),
            _ if self.spill.is_empty() => None,
            _ => self
                .spill
                .find(spill_hash(*id), |(k, _)| k == id)
                .map(|(_, slot)| slot),
        }
    }

    /// The entry of `id`, if it is in the map, to change.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: &JobId) -> Option<&mut Slot> {
        let i = self.index(*id);
        match &mut self.ring[i] {
            Some((k, slot)) if k == id => Some(slot),
            _ if self.spill.is_empty() => None,
            _ => self
                .spill
                .find_mut(spill_hash(*id), |(k, _)| k == id)
                .map(|(_, slot)| slot),
        }
    }

    /// Takes the entry of `id` out of the map.
    #[inline]
    pub(crate) fn remove(&mut self, id: &JobId) -> Option<Slot> {
        let i = self.index(*id);
        let place = &mut self.ring[i];
        if place.as_ref().is_some_and(|(k, _)| k == id) {
            self.in_ring -= 1;
            return place.take().map(|(_, slot)| slot);
        }
        if self.spill.is_empty() {
            return None;
        }
        match self.spill.find_entry(spill_hash(*id), |(k, _)| k == id) {
            Ok(entry) => Some(entry.remove().0 .1),
            Err(_) => None,
        }
    }

    /// Every entry, to change.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.ring
            .iter_mut()
            .flatten()
            .chain(self.spill.iter_mut())
            .map(|(_, slot)| slot)
    }

    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }
}

/// The smallest ring a shard has.
const MIN_RING: usize = 16;

/// The longest ring a new shard starts with; it grows into the rest of the
/// room reserved.
const FIRST_RING: usize = 256;

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("len", &self.len())
            .field("ring", &self.ring.len())
            .field("spilled", &self.spill.len())
            .finish()
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
    /// pool with a large limit does not move its rings as they grow.
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
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The ids of shard 3, in the order they are handed out.
    fn ids(n: u64) -> impl Iterator<Item = JobId> {
        (0..n).map(|k| JobId(3 + k * SHARDS as u64))
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

    /// A window of ids as long as the ring, ending in order: every entry
    /// has its own place, nothing spills and the ring never grows.
    #[test]
    fn ids_ending_in_order_never_spill() {
        let mut shard = Shard::with_capacity(64);
        let all: Vec<JobId> = ids(10_000).collect();
        for (k, &id) in all.iter().enumerate() {
            if k >= 64 {
                assert!(shard.remove(&all[k - 64]).is_some());
            }
            shard.insert(id, Slot::new());
        }
        assert_eq!(
            (shard.ring.len(), shard.spill.len(), shard.len()),
            (64, 0, 64)
        );
    }

    /// A job that outlives many turns of the ring keeps its place; the ids
    /// that come to it spill, and are found there.
    #[test]
    fn a_long_job_keeps_its_place_and_newer_ids_spill() {
        let mut shard = Shard::with_capacity(16);
        let all: Vec<JobId> = ids(1_000).collect();
        shard.insert(all[0], Slot::new());
        for (k, &id) in all.iter().enumerate().skip(1) {
            shard.insert(id, Slot::new());
            assert!(shard.get(&id).is_some());
            if k > 1 {
                assert!(shard.remove(&all[k - 1]).is_some());
            }
        }
        assert!(shard.get(&all[0]).is_some());
        assert_eq!(shard.ring.len(), 16, "two live entries never grow the ring");
        assert!(shard.remove(&all[0]).is_some());
        assert!(shard.remove(&all[999]).is_some());
        assert_eq!(shard.len(), 0);
    }

    /// A window far wider than the ring grows it.
    #[test]
    fn a_wide_window_grows_the_ring() {
        let mut shard = Shard::with_capacity(16);
        for id in ids(1_000) {
            shard.insert(id, Slot::new());
        }
        assert_eq!(shard.len(), 1_000);
        assert!(shard.ring.len() >= 1_024, "ring of {}", shard.ring.len());
        assert!(shard.spill.len() <= shard.ring.len() / 16);
        assert!(ids(1_000).all(|id| shard.get(&id).is_some()));
    }

    /// A large reservation starts short and grows into its room without
    /// moving: a window as wide as the room ends in one place per id.
    #[test]
    fn a_shard_grows_into_the_room_it_reserved() {
        let mut shard = Shard::with_capacity(1 << 14);
        assert_eq!(shard.ring.len(), FIRST_RING);
        let room = shard.ring.as_ptr();
        for id in ids(1 << 14) {
            shard.insert(id, Slot::new());
        }
        assert_eq!(shard.ring.len(), 1 << 14);
        assert_eq!(shard.ring.as_ptr(), room, "the ring moved");
        assert!(ids(1 << 14).all(|id| shard.get(&id).is_some()));
        for id in ids(1 << 14) {
            assert!(shard.remove(&id).is_some());
        }
        assert_eq!((shard.len(), shard.in_ring), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Applies the next id.
        Insert,
        /// Ends the live job at this position (modulo how many there are).
        Remove(usize),
        /// Marks the live job at this position as killed.
        Mark(usize),
        /// Looks up an id that ended or was never applied.
        Miss(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Insert),
            // Mostly the oldest jobs end: the usual order.
            3 => (0usize..4).prop_map(Op::Remove),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => any::<usize>().prop_map(Op::Mark),
            1 => any::<u64>().prop_map(Op::Miss),
        ]
    }

    proptest! {
        /// Any sequence of inserts (ids in order, as the pool hands them
        /// out), removals in any order, and lookups agrees with a set.
        #[test]
        fn a_shard_agrees_with_a_set(ring in 0usize..40, ops in prop::collection::vec(op(), 1..600)) {
            let mut shard = Shard::with_capacity(ring);
            let mut live = BTreeSet::new();
            let mut marked = BTreeSet::new();
            let mut next = ids(u64::MAX >> 5);
            for op in ops {
                match op {
                    Op::Insert => {
                        let id = next.next().ok_or_else(|| TestCaseError::fail("ids ran out"))?;
                        shard.insert(id, Slot::new());
                        live.insert(id);
                    }
                    Op::Remove(k) if !live.is_empty() => {
                        let id = *live.iter().nth(k % live.len()).ok_or_else(|| TestCaseError::fail("no id"))?;
                        let slot = shard.remove(&id);
                        prop_assert!(slot.is_some(), "{id} not found");
                        prop_assert_eq!(slot.is_some_and(|s| s.switch.is_killed()), marked.remove(&id));
                        prop_assert!(shard.get(&id).is_none());
                        live.remove(&id);
                    }
                    Op::Mark(k) if !live.is_empty() => {
                        let id = *live.iter().nth(k % live.len()).ok_or_else(|| TestCaseError::fail("no id"))?;
                        let slot = shard.get_mut(&id);
                        prop_assert!(slot.is_some(), "{id} not found");
                        if let Some(slot) = slot {
                            let _ = slot.switch.kill();
                        }
                        marked.insert(id);
                    }
                    Op::Miss(raw) => {
                        let id = JobId(raw);
                        prop_assert_eq!(shard.get(&id).is_some(), live.contains(&id));
                    }
                    Op::Remove(_) | Op::Mark(_) => {}
                }
                prop_assert_eq!(shard.len(), live.len());
                prop_assert!(shard.ring.len().is_power_of_two());
            }
            for id in &live {
                prop_assert_eq!(shard.get(id).map(|s| s.switch.is_killed()), Some(marked.contains(id)));
            }
            prop_assert_eq!(shard.values_mut().count(), live.len());
        }
    }
}
