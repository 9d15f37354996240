//! Counting: a port's counter in its namespace's table, a pool's count of
//! the ports the kernel chose, a bind-before-connect by command. A count
//! finds its entry through a per-CPU cache of the last one used, then the
//! hash; a namespace's first count of a kind claims one (`claim`).

use portmon_common::{
    assigned, host_entry, range_class, slot, PoolKey, PortTable, PortTableKey, PORTS_PER_BLOCK,
};

use crate::{
    claim::{claim_block, claim_pool, claim_table},
    counter_maps::{
        count_health, xadd, BIND_BEFORE_CONNECT, KINDS, LAST_POOL, LAST_TABLE, POOL_COUNTS, POOL_INDEX,
        POOL_KEYS, PORT_STATS, PORT_TABLES, PORT_TABLE_INDEX,
    },
    netns::{host_netns, Netns},
};

/// Adds one to the `kind::*` counter of a port; a full map is counted.
#[inline(always)]
pub fn count(ns: Netns, proto: u8, family: u8, kind: u8, port: u16) {
    let key = PortTableKey::new(ns.cookie, proto, family, kind);
    let Some(table) = table(&key, &ns) else {
        return count_health(slot::PORT_TABLES_OVERFLOW);
    };
    // SAFETY: port / PORTS_PER_BLOCK is below BLOCKS_PER_TABLE; a map value
    // pointer, 4-byte aligned, valid for this run.
    let entry = unsafe {
        (&raw mut (*table).blocks)
            .cast::<u32>()
            .add(usize::from(port) / PORTS_PER_BLOCK)
    };
    // SAFETY: as above; other CPUs may write it, once, from 0.
    let mut index = unsafe { core::ptr::read_volatile(entry) };
    if index == 0 {
        index = match claim_block(table, entry, &ns) {
            Some(index) => index,
            None => return overflow(table, port),
        };
    }
    let Some(block) = PORT_STATS.get_ptr_mut(index) else {
        return overflow(table, port);
    };
    let i = usize::from(port) % PORTS_PER_BLOCK;
    // SAFETY: a map value pointer, valid for this run; `i` is below
    // PORTS_PER_BLOCK and each counter is 8-byte aligned.
    unsafe { xadd((&raw mut (*block).counts).cast::<u64>().add(i), 1) };
}

/// Counts `port` in its table's range class: the block it wanted is not
/// there (over the quota, or none left).
#[inline(always)]
fn overflow(table: *mut PortTable, port: u16) {
    let class = range_class::of(port);
    // SAFETY: a map value pointer, valid for this run; `class` is below
    // range_class::COUNT and each counter is 8-byte aligned.
    unsafe { xadd((&raw mut (*table).overflow).cast::<u64>().add(class), 1) };
}

/// Adds one to the count of ports the kernel handed out from a pool
/// (`assigned::*`); a full map is counted.
#[inline(always)]
pub fn count_assigned(ns: Netns, proto: u8, family: u8, how: u8) {
    let key = PoolKey::new(ns.cookie, proto, family, how);
    let Some(index) = pool(&key, &ns) else {
        return count_health(slot::POOLS_OVERFLOW);
    };
    if let Some(n) = POOL_COUNTS.get_ptr_mut(index) {
        // SAFETY: this CPU's value, 8-byte aligned, valid for this run;
        // atomic because a program in softirq may interrupt this one.
        unsafe { xadd(n, 1) };
    }
}

/// The `POOL_KEYS` entry of `key`, taken now if it has none.
#[inline(always)]
fn pool(key: &PoolKey, ns: &Netns) -> Option<u32> {
    let last = LAST_POOL.get_ptr_mut(u32::from(key.how) % u32::from(assigned::COUNT))?;
    // SAFETY: a per-CPU map value pointer; any index is checked below.
    let cached = unsafe { core::ptr::read_volatile(last) };
    if let Some(held) = POOL_KEYS.get(cached) {
        if *held == *key {
            return Some(cached);
        }
    }
    let index = if key.netns == host_netns() {
        host_pool(key)?
    } else {
        match POOL_INDEX.get_ptr(key) {
            // SAFETY: a map value pointer, valid for this run.
            Some(index) => unsafe { *index },
            None => claim_pool(key, ns)?,
        }
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(last, index) };
    Some(index)
}

/// The host's pool at its fixed entry, its key written (again: every
/// writer writes the same bytes).
#[inline(always)]
fn host_pool(key: &PoolKey) -> Option<u32> {
    let index = host_entry(key.proto, key.family, key.how.wrapping_sub(1))?;
    let held = POOL_KEYS.get_ptr_mut(index)?;
    // SAFETY: a map value pointer, valid for this run.
    unsafe { core::ptr::write_volatile(held, *key) };
    Some(index)
}

/// The table of `key`, taken now if it has none; `None` when the tables are
/// all taken.
#[inline(always)]
fn table(key: &PortTableKey, ns: &Netns) -> Option<*mut PortTable> {
    let last = LAST_TABLE.get_ptr_mut(u32::from(key.kind) % KINDS)?;
    // SAFETY: a per-CPU map value pointer, valid for this run. A program
    // that interrupts this one on this CPU may change it, to another valid
    // index: the key check below is what makes any index safe to use.
    let cached = unsafe { core::ptr::read_volatile(last) };
    if let Some(table) = PORT_TABLES.get_ptr_mut(cached) {
        // SAFETY: a map value pointer; a table's key is written before its
        // index is published and never changes.
        if unsafe { (*table).key } == *key {
            return Some(table);
        }
    }
    let (index, table) = if key.netns == host_netns() {
        // The host's tables need no index: nothing can take their entries.
        let index = host_entry(key.proto, key.family, key.kind)?;
        let table = PORT_TABLES.get_ptr_mut(index)?;
        // SAFETY: a map value pointer; every writer writes the same bytes.
        unsafe { core::ptr::write_volatile(&raw mut (*table).key, *key) };
        (index, table)
    } else {
        let index = match PORT_TABLE_INDEX.get_ptr(key) {
            // SAFETY: a map value pointer, valid for this run.
            Some(index) => unsafe { *index },
            None => claim_table(key, ns)?,
        };
        (index, PORT_TABLES.get_ptr_mut(index)?)
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(last, index) };
    Some(table)
}

/// Counts a connect from a socket bound to port 0, by the caller's command.
#[inline(always)]
pub fn count_bind_before_connect() {
    let comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16]);
    if let Some(p) = BIND_BEFORE_CONNECT.get_ptr_mut(comm) {
        // SAFETY: a map value pointer, 8-byte aligned.
        unsafe { xadd(p, 1) };
    } else if BIND_BEFORE_CONNECT.insert(comm, 1, 0).is_err() {
        count_health(slot::BIND_BEFORE_CONNECT_OVERFLOW);
    }
}
