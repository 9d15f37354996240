//! Gives back the kernel entries of namespaces that are gone: their port
//! tables, the blocks those hold, and their pools, so that namespaces
//! coming and going never fill the maps.
//!
//! A namespace's entries are given back in two steps. Retiring unlinks
//! them: the index entry goes first, then the key is cleared in the entry
//! itself, so that a CPU whose cache names the entry misses on the key
//! check from its next program run on (a live namespace by that cookie
//! would simply take new entries). After a quarantine far longer than any
//! program run — no run still holds a pointer it checked before the clear
//! — the final counts are read, the entries zeroed and their indices
//! pushed on the free queues, where the programs take them before new
//! ones. The quarantined entries are still read as the namespace's until
//! then, and their final counts kept by the caller for its grace period.
//! What they were charged to an unprivileged user's quota is taken off it
//! as they go back.

use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, Queue};
use portmon_common::{owner_held, PoolKey, PortTableKey};

use super::{
    counters::{overflow_counts, PortCounters, PortOverflow},
    mapped_array::MappedArray,
    pools::{assigned_count, AssignedCount},
    reserve::{Part, Split},
};

/// How long retired entries wait before they are zeroed and handed out
/// again: a program runs for microseconds; a second is far past any run,
/// preempted or not (cgroup and tracepoint programs run with migration
/// disabled, under RCU).
pub const QUARANTINE: Duration = Duration::from_secs(1);

/// The maps a reclaim writes, and the entries in quarantine.
pub struct Reclaim {
    pub(super) table_index: BpfHashMap<MapData, PortTableKey, u32>,
    pub(super) pool_index: BpfHashMap<MapData, PoolKey, u32>,
    free: FreeQueues,
    split: Split,
    quarantined: Vec<Retired>,
    owners: Owners,
}

/// What each unprivileged user's namespaces hold (`OWNER_HELD`, mapped),
/// and the user each pool is charged to (`POOL_OWNERS`).
pub(super) struct Owners {
    pub(super) held: MappedArray,
    pub(super) of_pools: Array<MapData, u32>,
}

/// The queues entries are given back on, one per map and part.
pub(super) struct FreeQueues {
    pub(super) tables: Queue<MapData, u32>,
    pub(super) blocks: Queue<MapData, u32>,
    pub(super) pools: Queue<MapData, u32>,
    pub(super) reserved_tables: Queue<MapData, u32>,
    pub(super) reserved_blocks: Queue<MapData, u32>,
    pub(super) reserved_pools: Queue<MapData, u32>,
}

impl std::fmt::Debug for Reclaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reclaim")
            .field("quarantined", &self.quarantined.len())
            .finish_non_exhaustive()
    }
}

/// Entries unlinked at `since`, keys cleared.
#[derive(Debug)]
struct Retired {
    since: Instant,
    tables: Vec<(usize, PortTableKey)>,
    pools: Vec<(u32, PoolKey)>,
}

/// The final counts of a namespace's entries given back: its ports, what
/// did not fit, and its pools.
#[derive(Debug, Default, Clone)]
pub struct FinalCounts {
    pub ports: Vec<(PortTableKey, u16, u64)>,
    pub overflow: Vec<PortOverflow>,
    pub assigned: Vec<AssignedCount>,
}

impl FinalCounts {
    /// Adds `more`, one sum per port, table class and pool: a namespace
    /// given back again and again holds one record of each.
    pub fn add(&mut self, more: FinalCounts) {
        self.ports.extend(more.ports);
        self.ports.sort_unstable_by_key(|&(key, port, _)| (key, port));
        self.ports.dedup_by(|later, kept| {
            let same = (later.0, later.1) == (kept.0, kept.1);
            if same {
                kept.2 += later.2;
            }
            same
        });
        self.overflow.extend(more.overflow);
        let overflow_key = |o: &PortOverflow| (o.netns, o.proto, o.family, o.kind, o.class);
        self.overflow.sort_unstable_by_key(overflow_key);
        self.overflow.dedup_by(|later, kept| {
            let same = overflow_key(later) == overflow_key(kept);
            if same {
                kept.count += later.count;
            }
            same
        });
        self.assigned.extend(more.assigned);
        let pool_key = |a: &AssignedCount| (a.netns, a.proto, a.family, a.how);
        self.assigned.sort_unstable_by_key(pool_key);
        self.assigned.dedup_by(|later, kept| {
            let same = pool_key(later) == pool_key(kept);
            if same {
                kept.count += later.count;
            }
            same
        });
    }
}

impl Reclaim {
    pub(super) fn new(
        table_index: BpfHashMap<MapData, PortTableKey, u32>,
        pool_index: BpfHashMap<MapData, PoolKey, u32>,
        free: FreeQueues,
        split: Split,
        owners: Owners,
    ) -> Self {
        Self {
            table_index,
            pool_index,
            free,
            split,
            quarantined: Vec::new(),
            owners,
        }
    }

    /// Tables in quarantine, still read as their namespace's.
    pub(super) fn quarantined_tables(&self) -> Vec<(usize, PortTableKey)> {
        self.quarantined
            .iter()
            .flat_map(|r| r.tables.iter().copied())
            .collect()
    }

    /// Pools in quarantine, as above.
    pub(super) fn quarantined_pools(&self) -> Vec<(u32, PoolKey)> {
        self.quarantined
            .iter()
            .flat_map(|r| r.pools.iter().copied())
            .collect()
    }

    /// Unlinks the tables and pools whose namespace `gone` says is gone;
    /// `handed_out` are the pool entries the kernel may have used.
    pub(super) fn retire(
        &mut self,
        ports: &PortCounters,
        pool_keys: &mut Array<MapData, PoolKey>,
        handed_out: &[u32],
        gone: impl Fn(u64) -> bool,
    ) {
        let tables: Vec<(usize, PortTableKey)> = ports.tables().filter(|(_, key)| gone(key.netns)).collect();
        for (entry, key) in &tables {
            // Not found: a race lost by user space; the key clear still unlinks.
            let _ = self.table_index.remove(key);
            ports.clear_key(*entry);
        }
        let pools: Vec<(u32, PoolKey)> = handed_out
            .iter()
            .filter_map(|&i| Some((i, pool_keys.get(&i, 0).ok()?)))
            .filter(|(_, key)| *key != PoolKey::default() && gone(key.netns))
            .collect();
        for (i, key) in &pools {
            let _ = self.pool_index.remove(key);
            if let Err(err) = pool_keys.set(*i, PoolKey::default(), 0) {
                tracing::warn!(entry = i, "cannot clear a pool's key: {err}");
            }
        }
        if !tables.is_empty() || !pools.is_empty() {
            self.quarantined.push(Retired {
                since: Instant::now(),
                tables,
                pools,
            });
        }
    }

    /// Gives back the entries whose quarantine is over, and returns their
    /// final counts.
    pub(super) fn release(
        &mut self,
        ports: &PortCounters,
        pool_counts: &mut PerCpuArray<MapData, u64>,
    ) -> FinalCounts {
        let mut out = FinalCounts::default();
        let (due, waiting): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.quarantined)
            .into_iter()
            .partition(|r| r.since.elapsed() >= QUARANTINE);
        self.quarantined = waiting;
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1));
        for retired in due {
            for (entry, key) in retired.tables {
                out.ports.extend(ports.counts_of(entry, key));
                out.overflow
                    .extend(overflow_counts(key, ports.overflow_of(entry)));
                let owner = ports.owner_of(entry);
                let blocks = ports.zero(entry);
                self.uncharge(owner, owner_held::TABLES, 1);
                self.uncharge(owner, owner_held::BLOCKS, blocks.len() as u64);
                for block in blocks {
                    self.give_back(Free::Block, block);
                }
                self.give_back(Free::Table, entry as u32);
            }
            for (i, key) in retired.pools {
                let count = pool_counts.get(&i, 0).map_or(0, |v| v.iter().sum());
                out.assigned.extend(assigned_count(key, count));
                match PerCpuValues::try_from(vec![0u64; cpus]) {
                    Ok(zero) => {
                        if let Err(err) = pool_counts.set(i, zero, 0) {
                            tracing::warn!(entry = i, "cannot zero a pool's counts, not given back: {err}");
                            continue;
                        }
                    }
                    Err(_) => continue,
                }
                let owner = self.owners.of_pools.get(&i, 0).unwrap_or(0);
                if owner != 0 {
                    if let Err(err) = self.owners.of_pools.set(i, 0, 0) {
                        tracing::warn!(entry = i, "cannot clear a pool's user, not given back: {err}");
                        continue;
                    }
                    self.uncharge(owner, owner_held::POOLS, 1);
                }
                self.give_back(Free::Pool, i);
            }
        }
        out
    }

    /// Takes `n` entries off the quota of the user whose `OWNER_HELD`
    /// entry is `owner` minus one; nothing for 0, charged to nobody.
    fn uncharge(&self, owner: u32, counter: usize, n: u64) {
        let Some(entry) = owner.checked_sub(1) else {
            return;
        };
        if n > 0 && !self.owners.held.subtract(entry as usize, counter, n) {
            tracing::warn!(entry, "a user's quota names no entry of OWNER_HELD");
        }
    }

    fn give_back(&mut self, which: Free, index: u32) {
        let part = match which {
            Free::Table => self.split.table(index),
            Free::Block => self.split.block(index),
            Free::Pool => self.split.pool(index),
        };
        let free = &mut self.free;
        let queue = match (which, part) {
            // The host's own entries are never its namespace's to give up.
            (_, Part::Host) => return,
            (Free::Table, Part::Shared) => &mut free.tables,
            (Free::Block, Part::Shared) => &mut free.blocks,
            (Free::Pool, Part::Shared) => &mut free.pools,
            (Free::Table, Part::Reserved) => &mut free.reserved_tables,
            (Free::Block, Part::Reserved) => &mut free.reserved_blocks,
            (Free::Pool, Part::Reserved) => &mut free.reserved_pools,
        };
        // The queue has room for every entry: full only if one were given
        // back twice. An entry not given back is lost, nothing worse.
        if let Err(err) = queue.push(index, 0) {
            tracing::warn!(index, "cannot give back a kernel map entry: {err}");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Free {
    Table,
    Block,
    Pool,
}

#[cfg(test)]
mod tests {
    use portmon_common::{Assignment, Family, Proto, Role};

    use super::*;

    fn counts(port_counts: &[(u16, u64)], overflow: u64, assigned: u64) -> FinalCounts {
        let key = PortTableKey::new(7, 6, 2, 0);
        FinalCounts {
            ports: port_counts.iter().map(|&(p, n)| (key, p, n)).collect(),
            overflow: vec![PortOverflow {
                netns: 7,
                proto: Proto::Tcp,
                family: Family::Inet,
                role: Role::Local,
                kind: 0,
                class: 1,
                count: overflow,
            }],
            assigned: vec![AssignedCount {
                netns: 7,
                proto: Proto::Tcp,
                family: Family::Inet,
                how: Assignment::Connect,
                count: assigned,
            }],
        }
    }

    #[test]
    fn final_counts_given_back_again_add_up_to_one_record_each() {
        let mut all = FinalCounts::default();
        all.add(counts(&[(80, 2), (443, 1)], 5, 10));
        all.add(counts(&[(80, 3)], 1, 4));
        all.add(counts(&[(8080, 1)], 0, 0));
        let ports: Vec<(u16, u64)> = all.ports.iter().map(|&(_, p, n)| (p, n)).collect();
        assert_eq!(ports, [(80, 5), (443, 1), (8080, 1)]);
        assert_eq!(all.overflow.len(), 1);
        assert_eq!(all.overflow[0].count, 6);
        assert_eq!(all.assigned.len(), 1);
        assert_eq!(all.assigned[0].count, 14);
    }
}
