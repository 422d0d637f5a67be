//! [`Queue`]: the pending entries of a timer, a 4-ary min-heap of deadlines
//! over a slab of entries, so that the nearest deadline is O(1) to read and
//! insert, pop and remove-by-key are O(log n).
//!
//! # Invariants
//!
//! - `heap[i].slot` names an occupied slot whose `link` is `i`: every heap
//!   position is known to its slot, which is what makes removal by key
//!   O(log n) instead of a linear search.
//! - A vacant slot holds no entry; its `link` is the next vacant slot (or
//!   [`NONE`]), forming the free list that starts at `free`.
//! - A slot's `gen` grows each time the slot is vacated, so a [`Key`] of an
//!   entry that fired or was cancelled never matches a later entry that
//!   reuses the slot.
//! - `heap.len()` is the number of occupied slots.

use super::entry::{Deadline, Entry};

/// Children per heap node; 4 keeps the heap shallow and each node's
/// children on one or two cache lines.
const ARITY: usize = 4;

/// End of the free list.
const NONE: u32 = u32::MAX;

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

/// One heap node: the ordering key next to its slot, so that sifting reads
/// only the heap array.
#[derive(Clone, Copy, Debug)]
struct Node {
    deadline: Deadline,
    slot: u32,
}

/// One slab slot.
#[derive(Debug)]
struct Slot {
    /// The pending entry; `None` when the slot is vacant.
    entry: Option<Entry>,
    /// Heap position when occupied; next vacant slot when vacant.
    link: u32,
    /// Bumped on every vacating (see the module invariants).
    gen: u32,
}

/// The slab is full: `u32::MAX - 1` entries are pending.
#[derive(Debug)]
pub(crate) struct Full;

/// The pending entries of one timer.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Min-heap of deadlines.
    heap: Vec<Node>,
    /// Entries by slot.
    slots: Vec<Slot>,
    /// Head of the free list, or [`NONE`] (also when `slots` is empty).
    free: u32,
}

impl Queue {
    /// An empty queue.
    pub(crate) fn new() -> Queue {
        Queue {
            heap: Vec::new(),
            slots: Vec::new(),
            free: NONE,
        }
    }

    /// Number of pending entries.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The nearest deadline.
    pub(crate) fn peek(&self) -> Option<&Deadline> {
        self.heap.first().map(|node| &node.deadline)
    }

    /// Adds `entry` to fire at `deadline`. O(log n) worst case, O(1) on
    /// average for random deadlines.
    pub(crate) fn insert(&mut self, deadline: Deadline, entry: Entry) -> Result<Key, Full> {
        let pos = self.heap.len();
        let pos32 = u32::try_from(pos).map_err(|_| Full)?;
        let slot = if self.free != NONE {
            let slot = self.free;
            let s = &mut self.slots[slot as usize];
            self.free = s.link;
            s.entry = Some(entry);
            s.link = pos32;
            slot
        } else {
            let slot = u32::try_from(self.slots.len()).map_err(|_| Full)?;
            if slot == NONE {
                return Err(Full);
            }
            self.slots.push(Slot {
                entry: Some(entry),
                link: pos32,
                gen: 0,
            });
            slot
        };
        let gen = self.slots[slot as usize].gen;
        self.heap.push(Node { deadline, slot });
        self.sift_up(pos);
        Ok(Key { slot, gen })
    }

    /// Removes the entry named by `key` if it is still pending. O(log n).
    pub(crate) fn remove(&mut self, key: Key) -> Option<(Deadline, Entry)> {
        let s = self.slots.get(key.slot as usize)?;
        if s.gen != key.gen || s.entry.is_none() {
            return None;
        }
        let pos = s.link as usize;
        Some(self.remove_at(pos))
    }

    /// The entry named by `key`, if it is still pending.
    pub(crate) fn get(&self, key: Key) -> Option<&Entry> {
        self.slots
            .get(key.slot as usize)
            .filter(|s| s.gen == key.gen)
            .and_then(|s| s.entry.as_ref())
    }

    /// Removes the entry with the nearest deadline if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: tokio::time::Instant) -> Option<(Key, Deadline, Entry)> {
        let node = *self.heap.first()?;
        if node.deadline.eta > now {
            return None;
        }
        let key = Key {
            slot: node.slot,
            gen: self.slots[node.slot as usize].gen,
        };
        let (deadline, entry) = self.remove_at(0);
        Some((key, deadline, entry))
    }

    /// Removes every entry, handing them back in no particular order.
    ///
    /// The slots stay (with bumped generations) rather than being freed, so
    /// that keys still held elsewhere go stale instead of matching new
    /// entries in a fresh slab.
    pub(crate) fn drain(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.heap.len());
        self.heap.clear();
        self.free = NONE;
        // Walk backwards so that the free list hands out low slots first.
        for (i, s) in self.slots.iter_mut().enumerate().rev() {
            if let Some(entry) = s.entry.take() {
                out.push(entry);
                s.gen = s.gen.wrapping_add(1);
            }
            s.link = self.free;
            self.free = i as u32;
        }
        out
    }

    /// Snapshot of the pending entries with their keys, in heap order
    /// (sort by deadline for firing order, after releasing the lock).
    pub(crate) fn snapshot(&self) -> Vec<(Deadline, Key, Entry)> {
        self.heap
            .iter()
            .filter_map(|node| {
                let s = &self.slots[node.slot as usize];
                let key = Key {
                    slot: node.slot,
                    gen: s.gen,
                };
                s.entry.clone().map(|e| (node.deadline, key, e))
            })
            .collect()
    }

    /// Takes the node at heap position `pos` out and vacates its slot.
    fn remove_at(&mut self, pos: usize) -> (Deadline, Entry) {
        let node = self.heap.swap_remove(pos);
        if pos < self.heap.len() {
            let moved = self.heap[pos].slot;
            self.slots[moved as usize].link = pos as u32;
            // The node moved in from the bottom may belong above or below.
            if pos > 0 && self.heap[pos].deadline < self.heap[(pos - 1) / ARITY].deadline {
                self.sift_up(pos);
            } else {
                self.sift_down(pos);
            }
        }
        let s = &mut self.slots[node.slot as usize];
        let entry = s.entry.take();
        s.gen = s.gen.wrapping_add(1);
        s.link = self.free;
        self.free = node.slot;
        debug_assert!(entry.is_some(), "a heap node always names an occupied slot");
        match entry {
            Some(entry) => (node.deadline, entry),
            // Unreachable by the invariants; an inert entry keeps release
            // builds from panicking.
            None => (node.deadline, Entry::new(|| {})),
        }
    }

    /// Moves the node at `pos` up to its place.
    fn sift_up(&mut self, mut pos: usize) {
        let node = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            if node.deadline >= self.heap[parent].deadline {
                break;
            }
            self.heap[pos] = self.heap[parent];
            self.slots[self.heap[pos].slot as usize].link = pos as u32;
            pos = parent;
        }
        self.heap[pos] = node;
        self.slots[node.slot as usize].link = pos as u32;
    }

    /// Moves the node at `pos` down to its place.
    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        let node = self.heap[pos];
        loop {
            let first = pos * ARITY + 1;
            if first >= len {
                break;
            }
            let last = (first + ARITY).min(len);
            let mut best = first;
            for child in first + 1..last {
                if self.heap[child].deadline < self.heap[best].deadline {
                    best = child;
                }
            }
            if self.heap[best].deadline >= node.deadline {
                break;
            }
            self.heap[pos] = self.heap[best];
            self.slots[self.heap[pos].slot as usize].link = pos as u32;
            pos = best;
        }
        self.heap[pos] = node;
        self.slots[node.slot as usize].link = pos as u32;
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
        for (i, node) in self.heap.iter().enumerate() {
            let s = &self.slots[node.slot as usize];
            assert!(s.entry.is_some(), "heap node {i} names a vacant slot");
            assert_eq!(
                s.link as usize, i,
                "slot {} lost its heap position",
                node.slot
            );
            if i > 0 {
                assert!(
                    self.heap[(i - 1) / ARITY].deadline <= node.deadline,
                    "heap order at {i}"
                );
            }
        }
        let occupied = self.slots.iter().filter(|s| s.entry.is_some()).count();
        assert_eq!(occupied, self.heap.len());
        let mut vacant = 0;
        let mut at = self.free;
        while at != NONE {
            assert!(self.slots[at as usize].entry.is_none());
            vacant += 1;
            at = self.slots[at as usize].link;
        }
        assert_eq!(vacant + occupied, self.slots.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tokio::time::Instant;

    fn deadline(base: Instant, ms: u64, priority: i32, seq: u64) -> Deadline {
        Deadline {
            eta: base + Duration::from_millis(ms),
            priority,
            seq,
        }
    }

    /// A tiny xorshift so the test needs no extra dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn pops_in_deadline_order_against_a_btreemap() {
        let base = Instant::now();
        let mut q = Queue::new();
        let mut model = BTreeMap::new();
        let mut keys = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for seq in 0..2_000u64 {
            let r = rng(&mut state);
            match r % 3 {
                0 | 1 => {
                    let d = deadline(base, r % 97, (r % 5) as i32 - 2, seq);
                    let key = q.insert(d, Entry::new(|| {})).unwrap();
                    model.insert(d, key);
                    keys.push((key, d));
                }
                _ if !keys.is_empty() => {
                    let (key, d) = keys.swap_remove((r as usize / 3) % keys.len());
                    let removed = q.remove(key).map(|(d, _)| d);
                    assert_eq!(removed, model.remove(&d).map(|_| d), "seq {seq}");
                    assert!(q.remove(key).is_none(), "a key removes once");
                }
                _ => {}
            }
            q.check();
            assert_eq!(q.len(), model.len());
            assert_eq!(q.peek(), model.keys().next());
        }
        let far = base + Duration::from_secs(1);
        let mut popped = Vec::new();
        while let Some((key, d, _)) = q.pop_due(far) {
            assert!(q.get(key).is_none(), "a popped key is stale");
            popped.push(d);
            q.check();
        }
        assert_eq!(popped, model.keys().copied().collect::<Vec<_>>());
    }

    #[test]
    fn pop_due_leaves_future_entries() {
        let base = Instant::now();
        let mut q = Queue::new();
        q.insert(deadline(base, 10, 0, 0), Entry::new(|| {}))
            .unwrap();
        q.insert(deadline(base, 5, 0, 1), Entry::new(|| {}))
            .unwrap();
        let now = base + Duration::from_millis(7);
        assert_eq!(q.pop_due(now).map(|(_, d, _)| d.seq), Some(1));
        assert!(q.pop_due(now).is_none());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn stale_keys_never_match_a_reused_slot() {
        let base = Instant::now();
        let mut q = Queue::new();
        let a = q
            .insert(deadline(base, 1, 0, 0), Entry::new(|| {}))
            .unwrap();
        assert!(q.remove(a).is_some());
        let b = q
            .insert(deadline(base, 1, 0, 1), Entry::new(|| {}))
            .unwrap();
        assert_eq!(a.slot, b.slot, "the slot is reused");
        assert!(q.remove(a).is_none(), "the old key is stale");
        assert!(q.get(b).is_some());
        let drained = q.drain();
        assert_eq!(drained.len(), 1);
        assert!(q.get(b).is_none(), "drain makes keys stale");
        q.check();
        let c = q
            .insert(deadline(base, 1, 0, 2), Entry::new(|| {}))
            .unwrap();
        assert_ne!(b, c);
        q.check();
    }

    #[test]
    fn key_packs_and_unpacks() {
        let key = Key {
            slot: 0xdead_beef,
            gen: 7,
        };
        assert_eq!(Key::unpack(key.pack()), key);
    }

    #[test]
    fn sorted_snapshot_is_firing_order() {
        let base = Instant::now();
        let mut q = Queue::new();
        for (seq, ms) in [30u64, 10, 20, 10].into_iter().enumerate() {
            q.insert(deadline(base, ms, 0, seq as u64), Entry::new(|| {}))
                .unwrap();
        }
        let mut snapshot = q.snapshot();
        snapshot.sort_unstable_by_key(|(d, _, _)| *d);
        let seqs: Vec<u64> = snapshot.iter().map(|(d, _, _)| d.seq).collect();
        assert_eq!(seqs, [1, 3, 2, 0]);
    }

    /// Memory per pending entry, measured from the capacities and sizes the
    /// queue asked the allocator for, at one million pending entries.
    #[test]
    fn a_million_pending_entries_fit_in_128_bytes_each() {
        let base = Instant::now();
        let mut q = Queue::new();
        let mut state = 0x2545_f491_4f6c_dd1d;
        let n = 1_000_000u64;
        for seq in 0..n {
            let ms = rng(&mut state) % 3_600_000;
            q.insert(deadline(base, ms, 0, seq), Entry::new(|| {}))
                .unwrap();
        }
        let per_entry = q.allocated_bytes() as f64 / n as f64;
        println!("queue bytes per pending entry: {per_entry:.1}");
        assert!(per_entry <= 128.0, "{per_entry} bytes per pending entry");
    }
}
