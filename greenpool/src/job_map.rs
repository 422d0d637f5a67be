//! The job map: `JobId` → how to kill the job, sharded by id.
//!
//! Ids are handed out in order, so neighbouring jobs land in different
//! shards: the task applying job *n* and the task ending job *n - k* rarely
//! want the same lock. Each entry holds the job's [`KillSwitch`] (its abort
//! handle once its task exists, and any hard kill that came first) and its
//! shared [`JobCell`](crate::job_cell::JobCell), type erased behind
//! [`JobControl`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::AbortHandle;

use crate::job_cell::JobControl;
use crate::job_id::JobId;
use crate::kill_switch::KillSwitch;

/// Number of shards; a power of two.
const SHARDS: usize = 16;

/// A job's entry.
pub(crate) struct Slot {
    /// Kills the job's task, now or once it exists.
    pub(crate) kill: KillSwitch<AbortHandle>,
    /// The job's shared state: token, kill request, killers waiting.
    pub(crate) control: Arc<dyn JobControl>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("spawned", &self.kill.handle().is_some())
            .finish_non_exhaustive()
    }
}

/// Hashes ids by multiplication: they are already unique integers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = HashMap<JobId, Slot, BuildHasherDefault<IdHasher>>;

/// The sharded map.
#[derive(Debug)]
pub(crate) struct JobMap {
    shards: Box<[Mutex<Shard>]>,
}

impl JobMap {
    pub(crate) fn new() -> Self {
        JobMap {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The shard that holds `id`, locked.
    pub(crate) fn shard(&self, id: JobId) -> MutexGuard<'_, Shard> {
        let i = (id.0 as usize) & (SHARDS - 1);
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard in turn, locked one at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&JobId, &mut Slot)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, slot) in shard.iter_mut() {
                f(id, slot);
            }
        }
    }

    /// How many jobs are in the map.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
