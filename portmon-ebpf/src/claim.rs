//! How a namespace takes entries of the counter maps, on the rare path
//! where it first counts a table, block or pool: from the host's own
//! entries, the reserve of host-owned namespaces or the shared ones, and
//! within its user's quota of those (`owner_quota`).

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::Queue};
use portmon_common::{capacity, slot, PoolKey, PortTable, PortTableKey};

use crate::{
    counter_maps::{
        count_health, fetch_add, xadd, HEALTH, POOL_INDEX, POOL_KEYS, PORT_STATS, PORT_TABLES,
        PORT_TABLE_INDEX,
    },
    netns::{host_netns, Netns},
    owner_quota::{Entry, Owner, POOL_OWNERS},
};

// Entries given back, by the daemon when their namespace is gone (after a
// quarantine that outlasts any program run, so nothing still holds them)
// and by a claim that lost a race. A queue rather than a bitmap to scan:
// taking one is a single helper call, on the rare path where a namespace
// first counts a table or block; its lock never meets the hot path.
#[map]
static FREE_PORT_TABLES: Queue<u32> =
    Queue::with_max_entries(capacity::PORT_STATS / capacity::BLOCKS_PER_TABLE_ENTRY, 0);

#[map]
static FREE_PORT_BLOCKS: Queue<u32> = Queue::with_max_entries(capacity::PORT_STATS, 0);

#[map]
static FREE_POOLS: Queue<u32> = Queue::with_max_entries(capacity::POOLS, 0);

// The same for the reserves of host-owned namespaces (`Netns::host_owned`),
// which the others never take from.
#[map]
static FREE_RESERVED_PORT_TABLES: Queue<u32> =
    Queue::with_max_entries(capacity::PORT_STATS / capacity::BLOCKS_PER_TABLE_ENTRY, 0);

#[map]
static FREE_RESERVED_PORT_BLOCKS: Queue<u32> = Queue::with_max_entries(capacity::PORT_STATS, 0);

#[map]
static FREE_RESERVED_POOLS: Queue<u32> = Queue::with_max_entries(capacity::POOLS, 0);

/// Set by the loader (see `global::TABLE_BLOCK_QUOTA`).
#[unsafe(no_mangle)]
static PORTMON_TABLE_BLOCK_QUOTA: u32 = capacity::BLOCKS_PER_NAMESPACE / capacity::HOST_ENTRIES;

/// Set by the loader (see `global::SHARED_BLOCKS`).
#[unsafe(no_mangle)]
static PORTMON_SHARED_BLOCKS: u32 = capacity::PORT_STATS / 2;

/// Set by the loader (see `global::RESERVED_BLOCKS`).
#[unsafe(no_mangle)]
static PORTMON_RESERVED_BLOCKS: u32 = capacity::PORT_STATS;

/// Set by the loader (see `global::SHARED_TABLES`).
#[unsafe(no_mangle)]
static PORTMON_SHARED_TABLES: u32 = u32::MAX;

/// Set by the loader (see `global::SHARED_POOLS`).
#[unsafe(no_mangle)]
static PORTMON_SHARED_POOLS: u32 = u32::MAX;

/// Which part of an array an entry may come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The host's namespace: its own entries, then the shared ones.
    Host,
    /// A namespace the host's user namespace owns: the reserve, then the
    /// shared entries.
    Reserved,
    /// Any other: the shared entries only.
    Shared,
}

impl Part {
    #[inline(always)]
    fn of(ns: &Netns) -> Self {
        if ns.cookie == host_netns() {
            Part::Host
        } else if ns.host_owned() {
            Part::Reserved
        } else {
            Part::Shared
        }
    }
}

/// Takes a block for the table entry `entry` (0 now): the host's reserve
/// first for the host's namespace, which has no quota; for any other, none
/// past its quota, from the reserve of host-owned namespaces first if it
/// is one. The quota is checked before the block is taken, so CPUs racing
/// may each take one more: a bound all the same.
#[inline(always)]
pub fn claim_block(table: *mut PortTable, entry: *mut u32, ns: &Netns) -> Option<u32> {
    // SAFETY: a map value pointer, 8-byte aligned, valid for this run.
    let held = unsafe { &raw mut (*table).held };
    let part = Part::of(ns);
    if part != Part::Host {
        let quota = loader_set!(PORTMON_TABLE_BLOCK_QUOTA);
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(held) } >= u64::from(quota) {
            return None;
        }
    }
    // SAFETY: a map value pointer, valid for this run; written before the
    // table was published.
    let owner = Owner::recorded(unsafe { (*table).owner });
    if owner.is_some_and(|owner| !owner.charge(Entry::Block)) {
        return None;
    }
    let taken = match part {
        Part::Host => take_host_block(),
        Part::Reserved => take_reserved_block(),
        Part::Shared => None,
    }
    .or_else(take_shared_block);
    let Some(taken) = taken else {
        if let Some(owner) = owner {
            owner.refund(Entry::Block);
        }
        count_health(slot::PORT_STATS_OVERFLOW);
        return None;
    };
    // SAFETY: the entry pointer, 4-byte aligned, into a map value.
    let index = unsafe { put_once(entry, taken) };
    if index == taken {
        // SAFETY: as above.
        unsafe { xadd(held, 1) };
        return Some(index);
    }
    if let Some(owner) = owner {
        owner.refund(Entry::Block);
    }
    // Nobody else knew `taken`: it is free again at once. A block of the
    // host's reserve lost so stays unused: that reserve is never given back.
    if taken <= loader_set!(PORTMON_SHARED_BLOCKS) {
        let _ = FREE_PORT_BLOCKS.push(taken, 0);
    } else if taken <= loader_set!(PORTMON_RESERVED_BLOCKS) {
        let _ = FREE_RESERVED_PORT_BLOCKS.push(taken, 0);
    }
    Some(index)
}

/// A block of the shared part of `PORT_STATS`: one given back, else a new one.
#[inline(always)]
fn take_shared_block() -> Option<u32> {
    let last = loader_set!(PORTMON_SHARED_BLOCKS);
    take(&FREE_PORT_BLOCKS, slot::PORT_BLOCKS_TAKEN, 0, last)
}

/// A block of the reserve of host-owned namespaces, after the shared part.
#[inline(always)]
fn take_reserved_block() -> Option<u32> {
    let (first, last) = (
        loader_set!(PORTMON_SHARED_BLOCKS),
        loader_set!(PORTMON_RESERVED_BLOCKS),
    );
    take(
        &FREE_RESERVED_PORT_BLOCKS,
        slot::RESERVED_BLOCKS_TAKEN,
        first,
        last,
    )
}

/// A block of the host's reserve, after the other reserve; never given back.
#[inline(always)]
fn take_host_block() -> Option<u32> {
    let first = loader_set!(PORTMON_RESERVED_BLOCKS);
    let taken = HEALTH.get_ptr_mut(slot::HOST_BLOCKS_TAKEN)?;
    let index = first
        .checked_add(1)?
        .checked_add(u32::try_from(fetch_add(taken)).ok()?)?;
    PORT_STATS.get_ptr_mut(index).map(|_| index)
}

/// Hands out a `POOL_KEYS` entry for `key`, as `claim_table` does a table.
#[inline(always)]
pub fn claim_pool(key: &PoolKey, ns: &Netns) -> Option<u32> {
    let owner = ns.owner();
    if owner.is_some_and(|owner| !owner.charge(Entry::Pool)) {
        return None;
    }
    let claimed = take_pool(owner.is_none()).and_then(|index| {
        // Past the end once the array is full.
        let held = POOL_KEYS.get_ptr_mut(index)?;
        let recorded = POOL_OWNERS.get_ptr_mut(index)?;
        Some((index, held, recorded))
    });
    let Some((index, held, recorded)) = claimed else {
        if let Some(owner) = owner {
            owner.refund(Entry::Pool);
        }
        return None;
    };
    let shared = loader_set!(PORTMON_SHARED_POOLS);
    // SAFETY: a map value pointer, valid for this run; nobody else knows
    // the entry until it is published.
    unsafe { *recorded = owner.map_or(0, Owner::recorded_as) };
    if POOL_INDEX.insert(key, index, u64::from(BPF_NOEXIST)).is_ok() {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { *held = *key };
        return Some(index);
    }
    // SAFETY: as above.
    unsafe { *recorded = 0 };
    if let Some(owner) = owner {
        owner.refund(Entry::Pool);
    }
    // Its key never written: no cache can match it, it is free at once.
    let free = if index > shared {
        &FREE_RESERVED_POOLS
    } else {
        &FREE_POOLS
    };
    let _ = free.push(index, 0);
    // SAFETY: a map value pointer, valid for this run.
    POOL_INDEX.get_ptr(key).map(|index| unsafe { *index })
}

/// A `POOL_KEYS` entry: from the reserve first for a namespace the host's
/// user namespace owns.
#[inline(always)]
fn take_pool(host_owned: bool) -> Option<u32> {
    let shared = loader_set!(PORTMON_SHARED_POOLS);
    // Past the array's end once the reserve is all handed out.
    let reserved = || {
        take(&FREE_RESERVED_POOLS, slot::RESERVED_POOLS_TAKEN, shared, u32::MAX)
            .filter(|&i| POOL_KEYS.get_ptr(i).is_some())
    };
    if host_owned { reserved() } else { None }
        .or_else(|| take(&FREE_POOLS, slot::POOLS_TAKEN, capacity::HOST_ENTRIES, shared))
}

/// Hands out a table for `key` and publishes it in `PORT_TABLE_INDEX`;
/// when another CPU published one first, that one is the key's.
///
/// The index is published before the key is written: a CPU that finds the
/// index uses the table without checking its key, one whose cache names
/// the entry checks the key and at worst misses once. So an entry that
/// lost the race never carried a key, and no CPU's cache, stale from the
/// entry's previous owner, can match it: it is free again at once.
#[inline(always)]
pub fn claim_table(key: &PortTableKey, ns: &Netns) -> Option<u32> {
    let shared = loader_set!(PORTMON_SHARED_TABLES);
    // Past the array's end once the reserve is all handed out.
    let reserved = || {
        take(
            &FREE_RESERVED_PORT_TABLES,
            slot::RESERVED_TABLES_TAKEN,
            shared,
            u32::MAX,
        )
        .filter(|&i| PORT_TABLES.get_ptr(i).is_some())
    };
    let owner = ns.owner();
    if owner.is_some_and(|owner| !owner.charge(Entry::Table)) {
        return None;
    }
    let claimed = if owner.is_none() { reserved() } else { None }
        .or_else(|| {
            take(
                &FREE_PORT_TABLES,
                slot::PORT_TABLES_TAKEN,
                capacity::HOST_ENTRIES,
                shared,
            )
        })
        // Past the end once the array is full.
        .and_then(|index| Some((index, PORT_TABLES.get_ptr_mut(index)?)));
    let Some((index, table)) = claimed else {
        if let Some(owner) = owner {
            owner.refund(Entry::Table);
        }
        return None;
    };
    // SAFETY: a map value pointer, valid for this run; nobody else knows
    // the entry until it is published, and a block's claim reads it.
    unsafe { (*table).owner = owner.map_or(0, Owner::recorded_as) };
    if PORT_TABLE_INDEX
        .insert(key, index, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { (*table).key = *key };
        return Some(index);
    }
    // SAFETY: as above.
    unsafe { (*table).owner = 0 };
    if let Some(owner) = owner {
        owner.refund(Entry::Table);
    }
    let free = if index > shared {
        &FREE_RESERVED_PORT_TABLES
    } else {
        &FREE_PORT_TABLES
    };
    let _ = free.push(index, 0);
    // SAFETY: a map value pointer, valid for this run.
    PORT_TABLE_INDEX.get_ptr(key).map(|index| unsafe { *index })
}

/// An entry given back to `free`, else the next new one: the health
/// counter `taken` counts those handed out, which start after the first
/// `skip` entries and end at `last` (or the array's end, which the caller
/// checks). A queue that fails (contended in NMI) reads as empty.
#[inline(always)]
fn take(free: &Queue<u32>, taken: u32, skip: u32, last: u32) -> Option<u32> {
    if let Ok(Some(index)) = free.pop() {
        return Some(index);
    }
    let taken = HEALTH.get_ptr_mut(taken)?;
    let index = u32::try_from(fetch_add(taken)).ok()?.checked_add(skip + 1)?;
    (index <= last).then_some(index)
}

/// Puts `index` in a table entry that was 0, and returns what the entry
/// holds: `index`, or what another CPU put there first (`index` then stays
/// unused).
///
/// # Safety
/// `entry` must be valid and 4-byte aligned.
#[inline(always)]
unsafe fn put_once(entry: *mut u32, index: u32) -> u32 {
    // SAFETY: upheld by the caller.
    let (held, put) = unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(entry, 0, index)
    };
    if put {
        index
    } else {
        held
    }
}
