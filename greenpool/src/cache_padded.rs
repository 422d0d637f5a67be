//! [`CachePadded`]: a value on a cache line (pair) of its own.

/// Keeps its value on a cache line of its own, and off the neighbouring
/// one that x86 prefetches with it (128 bytes): state that two threads
/// write per job (the job map's shards, the end counters, the kill epoch)
/// does not share a line with its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(T);

impl<T> CachePadded<T> {
    /// Pads `value`.
    pub(crate) const fn new(value: T) -> Self {
        CachePadded(value)
    }
}

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
