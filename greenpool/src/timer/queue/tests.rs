//! Tests of the timer queue: firing order against a model, tombstones,
//! stale keys, compaction and the size of an entry.

use super::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// A tiny xorshift so the test needs no extra dependency.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn ms(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

#[test]
fn pops_in_firing_order_against_a_btreemap() {
    let base = Instant::now();
    let mut q = Queue::new();
    let mut model = BTreeMap::new();
    let mut keys = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for seq in 0..5_000u64 {
        let r = rng(&mut state);
        match r % 3 {
            0 | 1 => {
                let eta = ms(base, r % 97);
                let priority = (r % 5) as i32 - 2;
                let (key, _) = q.insert(eta, priority, Entry::new(|| {})).unwrap();
                model.insert((eta, priority, seq), key);
                keys.push((key, (eta, priority, seq)));
            }
            _ if !keys.is_empty() => {
                let (key, d) = keys.swap_remove((r as usize / 3) % keys.len());
                assert_eq!(q.remove(key).is_some(), model.remove(&d).is_some());
                assert!(q.remove(key).is_none(), "a key removes once");
            }
            _ => {}
        }
        q.check();
        assert_eq!(q.len(), model.len());
        assert_eq!(q.next_eta(), model.keys().next().map(|k| k.0));
        q.check();
    }
    let mut popped = Vec::new();
    while let Some((key, _)) = q.pop_due(ms(base, 1_000)) {
        assert!(q.get(key).is_none(), "a popped key is stale");
        popped.push(key);
        q.check();
    }
    assert_eq!(popped, model.values().copied().collect::<Vec<_>>());
}

#[test]
fn insert_reports_a_new_head() {
    let base = Instant::now();
    let mut q = Queue::new();
    assert!(q.insert(ms(base, 10), 0, Entry::new(|| {})).unwrap().1);
    assert!(
        !q.insert(ms(base, 10), 0, Entry::new(|| {})).unwrap().1,
        "ties go after"
    );
    assert!(q.insert(ms(base, 10), -1, Entry::new(|| {})).unwrap().1);
    assert!(q.insert(ms(base, 5), 9, Entry::new(|| {})).unwrap().1);
    assert!(!q.insert(ms(base, 6), 0, Entry::new(|| {})).unwrap().1);
}

#[test]
fn pop_due_leaves_future_entries_and_skips_cancelled_ones() {
    let base = Instant::now();
    let mut q = Queue::new();
    let (late, _) = q.insert(ms(base, 10), 0, Entry::new(|| {})).unwrap();
    let (early, _) = q.insert(ms(base, 5), 0, Entry::new(|| {})).unwrap();
    let (cancelled, _) = q.insert(ms(base, 1), 0, Entry::new(|| {})).unwrap();
    assert!(q.remove(cancelled).is_some());
    assert_eq!(
        q.next_eta(),
        Some(ms(base, 5)),
        "a cancelled head is skipped"
    );
    let now = ms(base, 7);
    assert_eq!(q.pop_due(now).map(|(k, _)| k), Some(early));
    assert!(q.pop_due(now).is_none());
    assert_eq!(q.len(), 1);
    assert!(q.get(late).is_some());
    q.check();
}

#[test]
fn stale_keys_never_match_a_reused_slot() {
    let base = Instant::now();
    let mut q = Queue::new();
    let (a, _) = q.insert(base, 0, Entry::new(|| {})).unwrap();
    assert!(q.pop_due(base).is_some());
    let (b, _) = q.insert(base, 0, Entry::new(|| {})).unwrap();
    assert_eq!(a.slot, b.slot, "the slot is reused");
    assert!(q.remove(a).is_none(), "the old key is stale");
    assert!(q.get(b).is_some());
    assert_eq!(q.drain().len(), 1);
    assert!(q.get(b).is_none(), "drain makes keys stale");
    q.check();
    let (c, _) = q.insert(base, 0, Entry::new(|| {})).unwrap();
    assert_ne!(b, c);
    q.check();
}

#[test]
fn cancelling_most_entries_compacts_the_heap() {
    let base = Instant::now();
    let mut q = Queue::new();
    let keys: Vec<Key> = (0..1_000u64)
        .map(|i| q.insert(ms(base, i), 0, Entry::new(|| {})).unwrap().0)
        .collect();
    for key in &keys[..900] {
        assert!(q.remove(*key).is_some());
        q.check();
    }
    assert_eq!(q.len(), 100);
    assert!(
        q.heap.len() <= 100 + COMPACT_MIN.max(100),
        "tombstones were compacted"
    );
    assert_eq!(q.next_eta(), Some(ms(base, 900)));
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
fn etas_round_trip_and_clamp() {
    let q = Queue::new();
    let now = Instant::now();
    assert_eq!(q.instant(q.ticks(now)), now);
    let long_ago = q.origin.checked_sub(Duration::from_secs(1));
    if let Some(t) = long_ago {
        assert_eq!(q.ticks(t), 0, "before the origin counts as the origin");
    }
}

#[test]
fn snapshot_sorted_is_firing_order() {
    let base = Instant::now();
    let mut q = Queue::new();
    for (i, m) in [30u64, 10, 20, 10].into_iter().enumerate() {
        let (key, _) = q.insert(ms(base, m), 0, Entry::new(|| {})).unwrap();
        if i == 2 {
            q.remove(key);
        }
    }
    let mut snapshot = q.snapshot();
    snapshot.sort_unstable_by_key(|p| p.deadline);
    let seqs: Vec<u64> = snapshot.iter().map(|p| p.deadline.seq).collect();
    assert_eq!(seqs, [1, 3, 0]);
    assert_eq!(snapshot[0].eta, ms(base, 10));
}

/// Memory per pending entry, measured from the capacities and sizes the
/// queue asked the allocator for, at one million pending entries.
#[test]
fn a_million_pending_entries_fit_in_128_bytes_each() {
    let base = Instant::now();
    let mut q = Queue::new();
    let mut state = 0x2545_f491_4f6c_dd1d;
    let n = 1_000_000u64;
    for _ in 0..n {
        let eta = ms(base, rng(&mut state) % 3_600_000);
        q.insert(eta, 0, Entry::new(|| {})).unwrap();
    }
    let per_entry = q.allocated_bytes() as f64 / n as f64;
    println!("queue bytes per pending entry: {per_entry:.1}");
    assert!(per_entry <= 128.0, "{per_entry} bytes per pending entry");
}
