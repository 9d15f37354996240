//! The counters every program shares: per-port blocks, per-pool counts of
//! the ports the kernel chose, portmon's health, bind-before-connect by
//! command, and the failure ring buffer.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use crate::layout;
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, Queue, RingBuf},
};
use portmon_common::{
    assigned, capacity, host_entry, kind, range_class, slot, PoolKey, PortBlock, PortTable, PortTableKey,
    PORTS_PER_BLOCK,
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

/// Set by the loader: the daemon's own namespace (see `global::HOST_NETNS`).
#[unsafe(no_mangle)]
static PORTMON_HOST_NETNS: u64 = 0;

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

/// A plain read of a static the loader sets; volatile so the compiler
/// keeps it.
macro_rules! loader_set {
    ($name:ident) => {
        // SAFETY: a plain read of a static.
        unsafe { core::ptr::read_volatile(&raw const $name) }
    };
}

#[inline(always)]
fn host_netns() -> u64 {
    loader_set!(PORTMON_HOST_NETNS)
}

/// The namespace a count is for: its cookie, and a socket in it, through
/// which the rare claim of a new table, block or pool learns who owns it.
#[derive(Clone, Copy)]
pub struct Netns {
    pub cookie: u64,
    sk: u64,
    /// `sk` is a sock_addr context, which holds the socket.
    in_context: bool,
}

impl Netns {
    /// The namespace `cookie`, which the kernel socket at address `sk` is in.
    #[inline(always)]
    pub fn new(cookie: u64, sk: u64) -> Self {
        Self {
            cookie,
            sk,
            in_context: false,
        }
    }

    /// The namespace `cookie`, which the socket of the sock_addr context
    /// `ctx` is in.
    #[inline(always)]
    pub fn of_sock_addr(cookie: u64, ctx: u64) -> Self {
        Self {
            cookie,
            sk: ctx,
            in_context: true,
        }
    }

    /// The same socket's namespace, by the cookie its slot recorded.
    #[inline(always)]
    pub fn with_cookie(self, cookie: u64) -> Self {
        Self { cookie, ..self }
    }

    /// Whether the host's user namespace owns it: made by a process with
    /// `CAP_SYS_ADMIN` on the host, not by an unprivileged user through a
    /// user namespace of its own. Read only when something is claimed.
    #[inline(always)]
    fn host_owned(&self) -> bool {
        let sk = if self.in_context {
            layout::sock_addr_sk(self.sk)
        } else {
            self.sk
        };
        layout::user_ns_level(sk) == Some(0)
    }
}

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

// Preallocated: an insert takes an element from a per-CPU free list instead
// of allocating. Looked up only when the per-CPU cache misses.
#[map]
static PORT_TABLE_INDEX: HashMap<PortTableKey, u32> =
    HashMap::with_max_entries(capacity::PORT_STATS / capacity::BLOCKS_PER_TABLE_ENTRY, 0);

#[map]
static PORT_TABLES: Array<PortTable> = Array::with_max_entries(
    capacity::PORT_STATS / capacity::BLOCKS_PER_TABLE_ENTRY,
    BPF_F_MMAPABLE,
);

/// The `PORT_TABLES` entry each CPU last used for each kind of counter: a
/// workload counts the same few tables over and over.
#[map]
static LAST_TABLE: PerCpuArray<u32> = PerCpuArray::with_max_entries(KINDS, 0);

/// Kinds of counter (`kind::*`).
const KINDS: u32 = kind::COUNT as u32;

// Ports the kernel chose, one counter per namespace, protocol, family and
// way: the few lines a busy host counts on stay in each CPU's cache, where
// a counter per random port missed it on every count. Found as the port
// tables are: a per-CPU cache of the last entry used, checked against the
// entry's key, before the hash. Entry 0 is never handed out.
#[map]
static POOL_KEYS: Array<PoolKey> = Array::with_max_entries(capacity::POOLS, 0);

#[map]
static POOL_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::POOLS, 0);

#[map]
static POOL_INDEX: HashMap<PoolKey, u32> = HashMap::with_max_entries(capacity::POOLS, 0);

#[map]
static LAST_POOL: PerCpuArray<u32> = PerCpuArray::with_max_entries(assigned::COUNT as u32, 0);

// Blocks of neighbouring ports, because a connect's ephemeral port
// neighbours the last one's: the block's counters are still in the cache,
// where one entry per port would miss on each new port. Entry 0 is never
// handed out: it marks a block not yet taken in `PortTable`.
#[map]
static PORT_STATS: Array<PortBlock> = Array::with_max_entries(capacity::PORT_STATS, BPF_F_MMAPABLE);

#[map]
static BIND_BEFORE_CONNECT: HashMap<[u8; 16], u64> =
    HashMap::with_max_entries(capacity::BIND_BEFORE_CONNECT, 0);

#[map]
pub static FAILURES: RingBuf = RingBuf::with_byte_size(capacity::FAILURES_BYTES, 0);

#[map]
static HEALTH: Array<u64> = Array::with_max_entries(slot::COUNT, 0);

/// Adds one to a health counter.
#[inline(always)]
pub fn count_health(slot: u32) {
    if let Some(p) = HEALTH.get_ptr_mut(slot) {
        // SAFETY: the pointer is into an array map value, valid and aligned
        // for the program's lifetime.
        unsafe { xadd(p, 1) };
    }
}

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

/// Takes a block for the table entry `entry` (0 now): the host's reserve
/// first for the host's namespace, which has no quota; for any other, none
/// past its quota, from the reserve of host-owned namespaces first if it
/// is one. The quota is checked before the block is taken, so CPUs racing
/// may each take one more: a bound all the same.
#[inline(always)]
fn claim_block(table: *mut PortTable, entry: *mut u32, ns: &Netns) -> Option<u32> {
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
    let taken = match part {
        Part::Host => take_host_block(),
        Part::Reserved => take_reserved_block(),
        Part::Shared => None,
    }
    .or_else(take_shared_block);
    let Some(taken) = taken else {
        count_health(slot::PORT_STATS_OVERFLOW);
        return None;
    };
    // SAFETY: the entry pointer, 4-byte aligned, into a map value.
    let index = unsafe { put_once(entry, taken) };
    if index == taken {
        // SAFETY: as above.
        unsafe { xadd(held, 1) };
    } else if taken <= loader_set!(PORTMON_SHARED_BLOCKS) {
        // Nobody else knew `taken`: it is free again at once.
        let _ = FREE_PORT_BLOCKS.push(taken, 0);
    } else if taken <= loader_set!(PORTMON_RESERVED_BLOCKS) {
        let _ = FREE_RESERVED_PORT_BLOCKS.push(taken, 0);
    }
    // A block of the host's reserve lost so stays unused: that reserve is
    // never given back.
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

/// Hands out a `POOL_KEYS` entry for `key`, as `claim_table` does a table.
#[inline(always)]
fn claim_pool(key: &PoolKey, ns: &Netns) -> Option<u32> {
    let shared = loader_set!(PORTMON_SHARED_POOLS);
    // Past the array's end once the reserve is all handed out.
    let reserved = || {
        take(&FREE_RESERVED_POOLS, slot::RESERVED_POOLS_TAKEN, shared, u32::MAX)
            .filter(|&i| POOL_KEYS.get_ptr(i).is_some())
    };
    let index = if ns.host_owned() { reserved() } else { None }
        .or_else(|| take(&FREE_POOLS, slot::POOLS_TAKEN, capacity::HOST_ENTRIES, shared))?;
    // Past the end once the array is full.
    let held = POOL_KEYS.get_ptr_mut(index)?;
    if POOL_INDEX.insert(key, index, u64::from(BPF_NOEXIST)).is_ok() {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { *held = *key };
        return Some(index);
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

/// Hands out a table for `key` and publishes it in `PORT_TABLE_INDEX`;
/// when another CPU published one first, that one is the key's.
///
/// The index is published before the key is written: a CPU that finds the
/// index uses the table without checking its key, one whose cache names
/// the entry checks the key and at worst misses once. So an entry that
/// lost the race never carried a key, and no CPU's cache, stale from the
/// entry's previous owner, can match it: it is free again at once.
#[inline(always)]
fn claim_table(key: &PortTableKey, ns: &Netns) -> Option<u32> {
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
    let index = if ns.host_owned() { reserved() } else { None }.or_else(|| {
        take(
            &FREE_PORT_TABLES,
            slot::PORT_TABLES_TAKEN,
            capacity::HOST_ENTRIES,
            shared,
        )
    })?;
    // Past the end once the array is full.
    let table = PORT_TABLES.get_ptr_mut(index)?;
    if PORT_TABLE_INDEX
        .insert(key, index, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { (*table).key = *key };
        return Some(index);
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

/// Adds one to `*p` and returns what it held.
#[inline(always)]
fn fetch_add(p: *mut u64) -> u64 {
    // Not Relaxed: LLVM's BPF backend lowers a relaxed add to the add that
    // returns nothing (BPF_ADD without BPF_FETCH), whatever uses its result.
    // SAFETY: callers pass an array map value pointer, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 1) }
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

/// An atomic add whose result is unused, which LLVM lowers to the BPF
/// atomic add instruction. `core::sync::atomic` has no 64-bit atomics for
/// the BPF target, hence the intrinsic.
///
/// # Safety
/// `p` must be valid and 8-byte aligned.
#[inline(always)]
pub unsafe fn xadd(p: *mut u64, delta: u64) {
    // SAFETY: upheld by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
}
