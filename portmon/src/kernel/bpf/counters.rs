//! Reads the kernel's counters: per-port activity (`PORT_STATS` blocks
//! found through `PORT_TABLES`, and the live sockets of the socket table)
//! and portmon's own health.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData};
use portmon_common::{
    kind, map, range_class, slot, Family, PortBlock, PortStats, PortTable, PortTableKey, Proto, Role,
    BLOCKS_PER_TABLE, PORTS_PER_BLOCK,
};

use super::{
    mapped_array::{MappedArray, MappedArrayError},
    socket_table::Followed,
};

/// Where a `PortTable`'s blocks start.
const TABLE_BLOCKS: usize = std::mem::offset_of!(PortTable, blocks);
/// Where its key's namespace is, and the word holding protocol, family and
/// kind.
const KEY_NETNS: usize = std::mem::offset_of!(PortTable, key) + std::mem::offset_of!(PortTableKey, netns);
const KEY_REST: usize = std::mem::offset_of!(PortTable, key) + std::mem::offset_of!(PortTableKey, proto);
/// Where its overflow counters are.
const TABLE_OVERFLOW: usize = std::mem::offset_of!(PortTable, overflow);
/// Where the user it is charged to is.
const TABLE_OWNER: usize = std::mem::offset_of!(PortTable, owner);

/// The kernel's per-port counters: the tables and the blocks they point
/// to, both mapped, read a word at a time.
#[derive(Debug)]
pub struct PortCounters {
    tables: MappedArray,
    blocks: MappedArray,
}

impl PortCounters {
    pub fn new(tables: MapData, blocks: MapData) -> Result<Self, MappedArrayError> {
        Ok(Self {
            tables: MappedArray::new(tables, map::PORT_TABLES, size_of::<PortTable>())?,
            blocks: MappedArray::new(blocks, map::PORT_STATS, size_of::<PortBlock>())?,
        })
    }

    /// Every table in use, with its key: (entry, key). Entry 0 is never
    /// handed out; a free one has a zero key.
    pub(super) fn tables(&self) -> impl Iterator<Item = (usize, PortTableKey)> + '_ {
        (1..self.tables.entries() as usize).filter_map(|i| {
            let key = self.key_of(i)?;
            (key != PortTableKey::default()).then_some((i, key))
        })
    }

    fn key_of(&self, entry: usize) -> Option<PortTableKey> {
        let (netns, rest) = (
            self.tables.field::<u64>(entry, KEY_NETNS)?,
            self.tables.field::<u64>(entry, KEY_REST)?,
        );
        let [proto, family, kind, ..] = rest.to_ne_bytes();
        Some(PortTableKey::new(netns, proto, family, kind))
    }

    /// The blocks of table `entry` that are taken: (first port / 64, index
    /// in `PORT_STATS`).
    pub(super) fn blocks_of(&self, entry: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..BLOCKS_PER_TABLE).filter_map(move |b| {
            let index = self
                .tables
                .field::<u32>(entry, TABLE_BLOCKS + b * size_of::<u32>())?;
            (index != 0).then_some((b, index as usize))
        })
    }

    /// Every port's nonzero counter of each kind: (key, port, count), of
    /// the tables in use and of `more` (tables whose keys are cleared).
    fn counts<'a>(
        &'a self,
        more: &'a [(usize, PortTableKey)],
    ) -> impl Iterator<Item = (PortTableKey, u16, u64)> + 'a {
        self.tables()
            .chain(more.iter().copied())
            .flat_map(move |(entry, key)| self.counts_of(entry, key))
    }

    /// The nonzero counters of table `entry`, whose key is `key`.
    pub(super) fn counts_of(
        &self,
        entry: usize,
        key: PortTableKey,
    ) -> impl Iterator<Item = (PortTableKey, u16, u64)> + '_ {
        self.blocks_of(entry).flat_map(move |(b, index)| {
            (0..PORTS_PER_BLOCK).filter_map(move |i| {
                let n = self.blocks.field::<u64>(index, i * size_of::<u64>())?;
                let port = u16::try_from(b * PORTS_PER_BLOCK + i).ok()?;
                (n != 0).then_some((key, port, n))
            })
        })
    }

    /// The overflow counters of table `entry`, by range class.
    pub(super) fn overflow_of(&self, entry: usize) -> [u64; range_class::COUNT] {
        std::array::from_fn(|c| {
            self.tables
                .field::<u64>(entry, TABLE_OVERFLOW + c * size_of::<u64>())
                .unwrap_or(0)
        })
    }

    /// The `OWNER_HELD` entry, plus one, table `entry` and its blocks are
    /// charged to; 0 for none.
    pub(super) fn owner_of(&self, entry: usize) -> u32 {
        self.tables.field::<u32>(entry, TABLE_OWNER).unwrap_or(0)
    }

    /// Clears table `entry`'s key, so that every CPU's cache of it misses
    /// from the next program run on.
    pub(super) fn clear_key(&self, entry: usize) {
        self.tables.set_field::<u64>(entry, KEY_NETNS, 0);
        self.tables.set_field::<u64>(entry, KEY_REST, 0);
    }

    /// Zeroes table `entry` and its blocks, once no program can reach
    /// them; returns the blocks' indices, free again.
    pub(super) fn zero(&self, entry: usize) -> Vec<u32> {
        let blocks: Vec<u32> = self.blocks_of(entry).map(|(_, index)| index as u32).collect();
        for &index in &blocks {
            for i in 0..PORTS_PER_BLOCK {
                self.blocks
                    .set_field::<u64>(index as usize, i * size_of::<u64>(), 0);
            }
        }
        for offset in (0..self.tables.value_size()).step_by(size_of::<u64>()) {
            self.tables.set_field::<u64>(entry, offset, 0);
        }
        blocks
    }

    /// Tables in use, and blocks they hold.
    pub(super) fn in_use(&self) -> (u64, u64) {
        self.tables().fold((0, 0), |(tables, blocks), (entry, _)| {
            (tables + 1, blocks + self.blocks_of(entry).count() as u64)
        })
    }

    /// Counts of every table that did not fit (`PortOverflow`), of the
    /// tables in use and of `more`.
    fn overflow(&self, more: &[(usize, PortTableKey)]) -> Vec<PortOverflow> {
        self.tables()
            .chain(more.iter().copied())
            .flat_map(|(entry, key)| overflow_counts(key, self.overflow_of(entry)))
            .collect()
    }
}

/// The overflow of one table as records, the zero ones left out.
pub(super) fn overflow_counts(
    key: PortTableKey,
    counts: [u64; range_class::COUNT],
) -> impl Iterator<Item = PortOverflow> {
    counts.into_iter().enumerate().filter_map(move |(class, count)| {
        let (Ok(proto), Ok(family), Ok(role)) = (
            Proto::try_from(key.proto),
            Family::try_from(key.family),
            Role::of_kind(key.kind),
        ) else {
            return None;
        };
        (count != 0).then_some(PortOverflow {
            netns: key.netns,
            proto,
            family,
            role,
            kind: key.kind,
            class,
            count,
        })
    })
}

/// Counts of one table's ports that found no block (over the namespace's
/// quota, or `PORT_STATS` full), in one range class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortOverflow {
    /// Network namespace cookie.
    pub netns: u64,
    pub proto: Proto,
    pub family: Family,
    pub role: Role,
    /// `kind::*`.
    pub kind: u8,
    /// `range_class::*`.
    pub class: usize,
    pub count: u64,
}

impl PortOverflow {
    /// The lowest port of its class, which names the class.
    pub fn first_port(&self) -> u16 {
        match self.class {
            range_class::SYSTEM => 0,
            range_class::USER => 1024,
            _ => 49152,
        }
    }
}

/// The counters of one port in one namespace, from one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCount {
    /// Network namespace cookie.
    pub netns: u64,
    pub proto: Proto,
    pub family: Family,
    pub role: Role,
    pub port: u16,
    pub stats: PortStats,
}

/// What port counts are grouped by while they are summed.
pub(super) type PortKey = (u64, Proto, Family, Role, u16);

/// What a table's count of `port` is grouped by; `None` for a key of a
/// protocol, family or kind this build does not know.
pub(super) fn port_key(key: &PortTableKey, port: u16) -> Option<PortKey> {
    Some((
        key.netns,
        Proto::try_from(key.proto).ok()?,
        Family::try_from(key.family).ok()?,
        Role::of_kind(key.kind).ok()?,
        port,
    ))
}

impl PortCount {
    /// A count from its grouping key and what was summed under it.
    pub(super) fn from_key((netns, proto, family, role, port): PortKey, stats: PortStats) -> Self {
        Self {
            netns,
            proto,
            family,
            role,
            port,
            stats,
        }
    }
}

/// portmon's own health, as the kernel side counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Failure events the ring buffer had no room for.
    pub events_dropped: u64,
    /// Counter increments lost because `PORT_STATS` had no block left.
    pub port_stats_overflow: u64,
    /// Counter increments lost to a full `PORT_TABLES`.
    pub port_tables_overflow: u64,
    /// Shared entries of `PORT_STATS` handed out new (`slot::PORT_BLOCKS_TAKEN`).
    pub port_blocks_taken: u64,
    /// Shared entries of `PORT_TABLES` handed out new, as above.
    pub port_tables_taken: u64,
    /// Sockets not followed because their slots in `SOCKETS` were taken.
    pub sockets_overflow: u64,
    /// Failures the kernel side detected, delivered or not.
    pub failures_seen: u64,
    /// Updates lost to a full `BIND_BEFORE_CONNECT`.
    pub bind_before_connect_overflow: u64,
    /// Counts lost to a full `POOL_KEYS`.
    pub pools_overflow: u64,
    /// Shared entries of `POOL_KEYS` handed out new, as `port_tables_taken`.
    pub pools_taken: u64,
    /// Entries of the reserve of host-owned namespaces handed out new, as
    /// above: tables, blocks and pools.
    pub reserved_tables_taken: u64,
    pub reserved_blocks_taken: u64,
    pub reserved_pools_taken: u64,
    /// Shared entries refused to an unprivileged user's namespaces because
    /// they held that user's quota.
    pub owner_quota_refused: u64,
    /// Users given an entry of their own in `OWNER_HELD`.
    pub owners_taken: u64,
}

/// Counts of ports that found no block of their own, of the tables in use
/// and of `more` (tables whose keys are cleared).
pub fn read_overflow(counters: &PortCounters, more: &[(usize, PortTableKey)]) -> Vec<PortOverflow> {
    counters.overflow(more)
}

/// What a port's counters are gathered under: (netns, proto, family, role, port).
type CounterKey = PortKey;

/// Every port's counters: the blocks' counters, and the live sockets of
/// `followed` on each port. Tables with keys portmon does not know are
/// skipped.
pub fn read_ports(
    counters: &PortCounters,
    more: &[(usize, PortTableKey)],
    followed: &[Followed],
) -> Vec<PortCount> {
    let mut ports: BTreeMap<CounterKey, PortStats> = BTreeMap::new();
    for (key, port, n) in counters.counts(more) {
        let Some(grouped) = port_key(&key, port) else {
            continue;
        };
        let stats = ports.entry(grouped).or_default();
        match key.kind {
            kind::BINDS => stats.binds = n,
            kind::LISTENS => stats.listens = n,
            _ => stats.connects = n,
        }
    }
    for f in followed {
        let (Ok(proto), Ok(family)) = (Proto::try_from(f.slot.proto), Family::try_from(f.slot.family)) else {
            continue;
        };
        let ends = [(Role::Local, f.holds_local()), (Role::Remote, f.connected_to())];
        for (role, port) in ends {
            if let Some(port) = port {
                ports
                    .entry((f.slot.netns, proto, family, role, port))
                    .or_default()
                    .live += 1;
            }
        }
    }
    ports
        .into_iter()
        .map(|(key, stats)| PortCount::from_key(key, stats))
        .collect()
}

/// Reads the health counters.
pub fn read_health(map: &Array<MapData, u64>) -> Health {
    let get = |slot: u32| map.get(&slot, 0).unwrap_or(0);
    Health {
        events_dropped: get(slot::EVENTS_DROPPED),
        port_stats_overflow: get(slot::PORT_STATS_OVERFLOW),
        port_tables_overflow: get(slot::PORT_TABLES_OVERFLOW),
        port_blocks_taken: get(slot::PORT_BLOCKS_TAKEN),
        port_tables_taken: get(slot::PORT_TABLES_TAKEN),
        sockets_overflow: get(slot::SOCKETS_OVERFLOW),
        failures_seen: get(slot::FAILURES_SEEN),
        bind_before_connect_overflow: get(slot::BIND_BEFORE_CONNECT_OVERFLOW),
        pools_overflow: get(slot::POOLS_OVERFLOW),
        pools_taken: get(slot::POOLS_TAKEN),
        reserved_tables_taken: get(slot::RESERVED_TABLES_TAKEN),
        reserved_blocks_taken: get(slot::RESERVED_BLOCKS_TAKEN),
        reserved_pools_taken: get(slot::RESERVED_POOLS_TAKEN),
        owner_quota_refused: get(slot::OWNER_QUOTA_REFUSED),
        owners_taken: get(slot::OWNER_SLOTS_TAKEN),
    }
}
