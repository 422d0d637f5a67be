//! [`Queue`]: the pending entries of a timer, a 4-ary min-heap of deadlines
//! over a slab of entries.
//!
//! Cancelling is lazy: the entry leaves its slot at once (so it is dropped,
//! no longer counted, and its key goes stale), but its heap node stays as a
//! tombstone until it reaches the top or the heap is compacted. Compaction
//! runs when tombstones outnumber live entries, so it costs O(1) amortised
//! per cancel. Insert is O(log n) worst case and O(1) on average for random
//! etas; pop is O(log n); cancel is O(1) amortised. Cancelling never lets
//! tombstones outnumber live entries beyond a small floor.
//!
//! Etas are stored as nanoseconds (`u64`) since `origin`, a year before the
//! queue was made, which keeps a heap node at 24 bytes. An eta more than a
//! year before the queue was made counts as `origin` (it is long past
//! either way), and one more than 584 years after it counts as the latest
//! representable instant.
//!
//! # Invariants
//!
//! - A slot is in one of three states: *live* (holds an entry, named by one
//!   heap node), *tombstone* (no entry, `link == TOMB`, named by one heap
//!   node), or *vacant* (no entry, on the free list through `link`, named by
//!   no node).
//! - `live + tombs == heap.len()`; `live` counts live slots and `tombs`
//!   tombstone slots.
//! - A slot's `gen` grows each time its entry leaves (fired, cancelled or
//!   drained), so a [`Key`] never names a later entry in the same slot.
//! - `tombs <= max(live, COMPACT_MIN)` after every `remove` (pops may
//!   lower `live` below that until the tombstones reach the top).

use tokio::time::Instant;

use super::entry::{Deadline, Entry};

/// Children per heap node; 4 keeps the heap shallow and each node's
/// children within one or two cache lines.
const ARITY: usize = 4;

/// End of the free list.
const END: u32 = u32::MAX;

/// `link` of a tombstone slot.
const TOMB: u32 = u32::MAX - 1;

/// `link` of a live slot (unused, but distinct from the others).
const LIVE: u32 = u32::MAX - 2;

/// Below this many tombstones the heap is never compacted.
const COMPACT_MIN: usize = 64;

/// How far before its creation a queue's origin lies.
const ORIGIN_LEAD: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Names one pending entry: its slot and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// Index in the slab.
    slot: u32,
    /// Generation of the slot when the entry went in.
    gen: u32,
}

impl Key {
    /// The key as one `u64` (slot in the high half), for atomics.
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(self.gen)
    }

    /// The inverse of [`Key::pack`].
    pub(crate) fn unpack(packed: u64) -> Key {
        Key {
            slot: (packed >> 32) as u32,
            gen: packed as u32,
        }
    }
}

/// One heap node: the fields of a [`Deadline`] next to the slot, laid out
/// without padding (24 bytes).
#[derive(Clone, Copy, Debug)]
struct Node {
    eta: u64,
    seq: u64,
    priority: i32,
    slot: u32,
}

impl Node {
    fn deadline(&self) -> Deadline {
        Deadline {
            eta: self.eta,
            priority: self.priority,
            seq: self.seq,
        }
    }
}

/// One slab slot (see the module invariants for its states).
#[derive(Debug)]
struct Slot {
    /// The pending entry of a live slot.
    entry: Option<Entry>,
    /// [`LIVE`], [`TOMB`], or the next vacant slot ([`END`] ends the list).
    link: u32,
    /// Bumped every time the entry leaves.
    gen: u32,
}

/// The slab is full: about 4 billion entries are pending.
#[derive(Debug)]
pub(crate) struct Full;

/// One pending entry in a snapshot.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Sort key: firing order.
    pub(crate) deadline: Deadline,
    /// The eta as an instant.
    pub(crate) eta: Instant,
    /// Its key.
    pub(crate) key: Key,
    /// The entry.
    pub(crate) entry: Entry,
}

/// The pending entries of one timer.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Instant of eta 0.
    origin: Instant,
    /// Min-heap of deadlines, tombstones included.
    heap: Vec<Node>,
    /// Entries by slot.
    slots: Vec<Slot>,
    /// Head of the free list.
    free: u32,
    /// Live slots.
    live: usize,
    /// Tombstone slots.
    tombs: usize,
    /// Next insertion number.
    next_seq: u64,
}

impl Queue {
    /// An empty queue.
    pub(crate) fn new() -> Queue {
        let now = Instant::now();
        Queue {
            origin: now.checked_sub(ORIGIN_LEAD).unwrap_or(now),
            heap: Vec::new(),
            slots: Vec::new(),
            free: END,
            live: 0,
            tombs: 0,
            next_seq: 0,
        }
    }

    /// `eta` as nanoseconds since the origin, clamped (see the module docs).
    fn ticks(&self, eta: Instant) -> u64 {
        let nanos = eta.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// The instant of `ticks`.
    fn instant(&self, ticks: u64) -> Instant {
        let d = std::time::Duration::from_nanos(ticks);
        self.origin.checked_add(d).unwrap_or(self.origin)
    }

    /// Number of pending entries.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Adds `entry` to fire at `eta`; also says whether it is now the
    /// nearest deadline.
    pub(crate) fn insert(
        &mut self,
        eta: Instant,
        priority: i32,
        entry: Entry,
    ) -> Result<(Key, bool), Full> {
        let slot = if self.free != END {
            let slot = self.free;
            let s = &mut self.slots[slot as usize];
            self.free = s.link;
            s.entry = Some(entry);
            s.link = LIVE;
            slot
        } else {
            let slot = u32::try_from(self.slots.len()).map_err(|_| Full)?;
            if slot >= LIVE {
                return Err(Full);
            }
            self.slots.push(Slot {
                entry: Some(entry),
                link: LIVE,
                gen: 0,
            });
            slot
        };
        let node = Node {
            eta: self.ticks(eta),
            seq: self.next_seq,
            priority,
            slot,
        };
        self.next_seq += 1;
        self.live += 1;
        self.heap.push(node);
        let pos = self.sift_up(self.heap.len() - 1);
        let key = Key {
            slot,
            gen: self.slots[slot as usize].gen,
        };
        Ok((key, pos == 0))
    }

    /// Cancels the entry named by `key` if it is still pending and hands it
    /// back. O(1) amortised.
    pub(crate) fn remove(&mut self, key: Key) -> Option<Entry> {
        let s = self.slots.get_mut(key.slot as usize)?;
        if s.gen != key.gen {
            return None;
        }
        let entry = s.entry.take()?;
        s.link = TOMB;
        s.gen = s.gen.wrapping_add(1);
        self.live -= 1;
        self.tombs += 1;
        if self.tombs > self.live.max(COMPACT_MIN) {
            self.compact();
        }
        Some(entry)
    }

    /// The entry named by `key`, if it is still pending.
    pub(crate) fn get(&self, key: Key) -> Option<&Entry> {
        self.slots
            .get(key.slot as usize)
            .filter(|s| s.gen == key.gen)
            .and_then(|s| s.entry.as_ref())
    }

    /// The eta of the nearest pending entry.
    pub(crate) fn next_eta(&mut self) -> Option<Instant> {
        self.skip_tombstones();
        self.heap.first().map(|node| self.instant(node.eta))
    }

    /// Takes out the nearest pending entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Key, Entry)> {
        self.skip_tombstones();
        let node = *self.heap.first()?;
        if node.eta > self.ticks(now) {
            return None;
        }
        self.pop_top();
        let s = &mut self.slots[node.slot as usize];
        let key = Key {
            slot: node.slot,
            gen: s.gen,
        };
        let entry = s.entry.take();
        s.gen = s.gen.wrapping_add(1);
        self.live -= 1;
        self.vacate(node.slot);
        debug_assert!(entry.is_some(), "the top is live after skipping tombstones");
        entry.map(|entry| (key, entry))
    }

    /// Removes every entry, handing them back in no particular order. Slots
    /// stay (with bumped generations) so that keys held elsewhere go stale.
    pub(crate) fn drain(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.live);
        self.heap.clear();
        self.free = END;
        // Backwards, so that the free list hands out low slots first.
        for (i, s) in self.slots.iter_mut().enumerate().rev() {
            if let Some(entry) = s.entry.take() {
                out.push(entry);
                s.gen = s.gen.wrapping_add(1);
            }
            s.link = self.free;
            self.free = i as u32;
        }
        self.live = 0;
        self.tombs = 0;
        out
    }

    /// The pending entries, in heap order (sort by deadline for firing
    /// order, after releasing the lock).
    pub(crate) fn snapshot(&self) -> Vec<Pending> {
        self.heap
            .iter()
            .filter_map(|node| {
                let s = &self.slots[node.slot as usize];
                s.entry.clone().map(|entry| Pending {
                    deadline: node.deadline(),
                    eta: self.instant(node.eta),
                    key: Key {
                        slot: node.slot,
                        gen: s.gen,
                    },
                    entry,
                })
            })
            .collect()
    }

    /// Pops tombstones off the top so that the top is live (or none).
    fn skip_tombstones(&mut self) {
        while let Some(node) = self.heap.first().copied() {
            if self.slots[node.slot as usize].link != TOMB {
                break;
            }
            self.pop_top();
            self.tombs -= 1;
            self.vacate(node.slot);
        }
    }

    /// Puts `slot` on the free list.
    fn vacate(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.link = self.free;
        self.free = slot;
    }

    /// Removes the top node.
    fn pop_top(&mut self) {
        let last = self.heap.pop();
        if let (Some(last), false) = (last, self.heap.is_empty()) {
            self.heap[0] = last;
            self.sift_down(0);
        }
    }

    /// Drops every tombstone node and restores the heap order. O(n).
    fn compact(&mut self) {
        let slots = &mut self.slots;
        let mut free = self.free;
        self.heap.retain(|node| {
            let s = &mut slots[node.slot as usize];
            if s.link == TOMB {
                s.link = free;
                free = node.slot;
                false
            } else {
                true
            }
        });
        self.free = free;
        self.tombs = 0;
        // Floyd's heap construction: sift down every parent, last first.
        if self.heap.len() > 1 {
            for pos in (0..=(self.heap.len() - 2) / ARITY).rev() {
                self.sift_down(pos);
            }
        }
    }

    /// Moves the node at `pos` up to its place; returns where it landed.
    fn sift_up(&mut self, mut pos: usize) -> usize {
        let node = self.heap[pos];
        let key = node.deadline();
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            if key >= self.heap[parent].deadline() {
                break;
            }
            self.heap[pos] = self.heap[parent];
            pos = parent;
        }
        self.heap[pos] = node;
        pos
    }

    /// Moves the node at `pos` down to its place.
    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        let node = self.heap[pos];
        let key = node.deadline();
        loop {
            let first = pos * ARITY + 1;
            if first >= len {
                break;
            }
            let last = (first + ARITY).min(len);
            let mut best = first;
            let mut best_key = self.heap[first].deadline();
            for child in first + 1..last {
                let k = self.heap[child].deadline();
                if k < best_key {
                    best = child;
                    best_key = k;
                }
            }
            if best_key >= key {
                break;
            }
            self.heap[pos] = self.heap[best];
            pos = best;
        }
        self.heap[pos] = node;
    }

    /// Bytes this queue has asked the allocator for, including the shared
    /// allocation of each entry (counted once per slot that holds it).
    #[cfg(test)]
    pub(crate) fn allocated_bytes(&self) -> usize {
        let entries: usize = self
            .slots
            .iter()
            .filter_map(|s| s.entry.as_ref())
            .map(Entry::allocation_size)
            .sum();
        self.heap.capacity() * std::mem::size_of::<Node>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + entries
    }

    /// Checks every invariant of the module docs.
    #[cfg(test)]
    fn check(&self) {
        let mut named = vec![0u8; self.slots.len()];
        for (i, node) in self.heap.iter().enumerate() {
            named[node.slot as usize] += 1;
            let s = &self.slots[node.slot as usize];
            assert!(
                s.entry.is_some() || s.link == TOMB,
                "heap node {i} names a vacant slot"
            );
            if i > 0 {
                let parent = &self.heap[(i - 1) / ARITY];
                assert!(parent.deadline() <= node.deadline(), "heap order at {i}");
            }
        }
        let live = self.slots.iter().filter(|s| s.entry.is_some()).count();
        let tombs = self.slots.iter().filter(|s| s.link == TOMB).count();
        assert_eq!((live, tombs), (self.live, self.tombs));
        assert_eq!(live + tombs, self.heap.len());
        for (i, s) in self.slots.iter().enumerate() {
            let expect = u8::from(s.entry.is_some() || s.link == TOMB);
            assert_eq!(named[i], expect, "slot {i} named by {} nodes", named[i]);
        }
        let mut vacant = 0;
        let mut at = self.free;
        while at != END {
            let s = &self.slots[at as usize];
            assert!(s.entry.is_none() && s.link != TOMB);
            vacant += 1;
            at = s.link;
        }
        assert_eq!(vacant + live + tombs, self.slots.len());
    }
}

#[cfg(test)]
mod tests;
