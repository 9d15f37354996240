//! Reads the kernel's counts of the ports it handed out from the ephemeral
//! pools: one per namespace, protocol, family and way (`POOL_KEYS`), each
//! counted per CPU (`POOL_COUNTS`).

use aya::maps::{Array, MapData, PerCpuArray};
use portmon_common::{capacity, Assignment, Family, PoolKey, Proto};

/// The pool counters: which entry is whose, and their per-CPU counts.
pub struct PoolCounters {
    pub(super) keys: Array<MapData, PoolKey>,
    pub(super) counts: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for PoolCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCounters")
            .field("entries", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Ports the kernel handed out from one pool, one way, since portmon loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AssignedCount {
    /// Network namespace cookie.
    pub netns: u64,
    pub proto: Proto,
    pub family: Family,
    pub how: Assignment,
    pub count: u64,
}

impl PoolCounters {
    /// Every pool counted so far, and those of `more` (entries whose keys
    /// are cleared); `taken` is how many shared entries the kernel handed
    /// out (the health counter), which bounds the entries read.
    pub fn read(&self, taken: u64, more: &[(u32, PoolKey)]) -> Vec<AssignedCount> {
        let last = u32::try_from(taken)
            .unwrap_or(u32::MAX)
            .saturating_add(capacity::HOST_ENTRIES)
            .min(self.keys.len().saturating_sub(1));
        let mut out: Vec<AssignedCount> = (1..=last)
            .filter_map(|i| Some((i, self.keys.get(&i, 0).ok()?)))
            .chain(more.iter().copied())
            .filter_map(|(i, key)| {
                // A zero key: an entry free or not yet written.
                assigned_count(key, self.counts.get(&i, 0).ok()?.iter().sum())
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Entries of `POOL_KEYS` in use.
    pub fn in_use(&self, taken: u64) -> u64 {
        let last = u32::try_from(taken)
            .unwrap_or(u32::MAX)
            .saturating_add(capacity::HOST_ENTRIES)
            .min(self.keys.len().saturating_sub(1));
        (1..=last)
            .filter(|i| self.keys.get(i, 0).is_ok_and(|k| k != PoolKey::default()))
            .count() as u64
    }
}

/// The count of the pool `key`, unless the key names none.
pub fn assigned_count(key: PoolKey, count: u64) -> Option<AssignedCount> {
    let (Ok(proto), Ok(family), Ok(how)) = (
        Proto::try_from(key.proto),
        Family::try_from(key.family),
        Assignment::try_from(key.how),
    ) else {
        return None;
    };
    Some(AssignedCount {
        netns: key.netns,
        proto,
        family,
        how,
        count,
    })
}
