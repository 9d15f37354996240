//! Reads the kernel's counts of the ports it handed out from the ephemeral
//! pools: one per namespace, protocol, family and way (`POOL_KEYS`), each
//! counted per CPU (`POOL_COUNTS`).

use std::ops::RangeInclusive;

use aya::maps::{Array, MapData, PerCpuArray};
use portmon_common::{capacity, Assignment, Family, PoolKey, Proto};

use super::{counters::Health, reserve::Split};

/// The pool counters: which entry is whose, and their per-CPU counts.
pub struct PoolCounters {
    pub(super) keys: Array<MapData, PoolKey>,
    pub(super) counts: PerCpuArray<MapData, u64>,
    pub(super) split: Split,
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
    /// The entries the kernel may have handed out: the host's and the
    /// shared ones, and the reserve's, each up to the last handed out new
    /// (the health counters).
    pub(super) fn handed_out(&self, health: &Health) -> impl Iterator<Item = u32> {
        let last = self.keys.len().saturating_sub(1);
        let upto = |first: u32, taken: u64, end: u32| -> RangeInclusive<u32> {
            let n = u32::try_from(taken).unwrap_or(u32::MAX);
            first..=first.saturating_add(n).saturating_sub(1).min(end).min(last)
        };
        let shared = self.split.shared_pools;
        upto(
            1,
            health.pools_taken.saturating_add(capacity::HOST_ENTRIES.into()),
            shared,
        )
        .chain(upto(
            shared.saturating_add(1),
            health.reserved_pools_taken,
            u32::MAX,
        ))
    }

    /// Every pool counted so far, and those of `more` (entries whose keys
    /// are cleared).
    pub fn read(&self, health: &Health, more: &[(u32, PoolKey)]) -> Vec<AssignedCount> {
        let mut out: Vec<AssignedCount> = self
            .handed_out(health)
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
    pub fn in_use(&self, health: &Health) -> u64 {
        self.handed_out(health)
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
