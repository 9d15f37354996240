//! The maps every program counts in: per-port blocks and the tables that
//! index them, per-pool counts of the ports the kernel chose, portmon's
//! health, bind-before-connect by command, and the failure ring buffer;
//! and the atomic adds they are counted with.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use portmon_common::{assigned, capacity, kind, slot, PoolKey, PortBlock, PortTable, PortTableKey};

// Preallocated: an insert takes an element from a per-CPU free list instead
// of allocating. Looked up only when the per-CPU cache misses.
#[map]
pub static PORT_TABLE_INDEX: HashMap<PortTableKey, u32> =
    HashMap::with_max_entries(capacity::PORT_STATS / capacity::BLOCKS_PER_TABLE_ENTRY, 0);

#[map]
pub static PORT_TABLES: Array<PortTable> = Array::with_max_entries(
    capacity::PORT_STATS / capacity::BLOCKS_PER_TABLE_ENTRY,
    BPF_F_MMAPABLE,
);

/// The `PORT_TABLES` entry each CPU last used for each kind of counter: a
/// workload counts the same few tables over and over.
#[map]
pub static LAST_TABLE: PerCpuArray<u32> = PerCpuArray::with_max_entries(KINDS, 0);

/// Kinds of counter (`kind::*`).
pub const KINDS: u32 = kind::COUNT as u32;

// Ports the kernel chose, one counter per namespace, protocol, family and
// way: the few lines a busy host counts on stay in each CPU's cache, where
// a counter per random port missed it on every count. Found as the port
// tables are: a per-CPU cache of the last entry used, checked against the
// entry's key, before the hash. Entry 0 is never handed out.
#[map]
pub static POOL_KEYS: Array<PoolKey> = Array::with_max_entries(capacity::POOLS, 0);

#[map]
pub static POOL_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::POOLS, 0);

#[map]
pub static POOL_INDEX: HashMap<PoolKey, u32> = HashMap::with_max_entries(capacity::POOLS, 0);

#[map]
pub static LAST_POOL: PerCpuArray<u32> = PerCpuArray::with_max_entries(assigned::COUNT as u32, 0);

// Blocks of neighbouring ports, because a connect's ephemeral port
// neighbours the last one's: the block's counters are still in the cache,
// where one entry per port would miss on each new port. Entry 0 is never
// handed out: it marks a block not yet taken in `PortTable`.
#[map]
pub static PORT_STATS: Array<PortBlock> = Array::with_max_entries(capacity::PORT_STATS, BPF_F_MMAPABLE);

#[map]
pub static BIND_BEFORE_CONNECT: HashMap<[u8; 16], u64> =
    HashMap::with_max_entries(capacity::BIND_BEFORE_CONNECT, 0);

#[map]
pub static FAILURES: RingBuf = RingBuf::with_byte_size(capacity::FAILURES_BYTES, 0);

#[map]
pub static HEALTH: Array<u64> = Array::with_max_entries(slot::COUNT, 0);

/// A health counter, to add to.
#[inline(always)]
pub fn health_counter(slot: u32) -> Option<*mut u64> {
    HEALTH.get_ptr_mut(slot)
}

/// Adds one to a health counter.
#[inline(always)]
pub fn count_health(slot: u32) {
    if let Some(p) = HEALTH.get_ptr_mut(slot) {
        // SAFETY: the pointer is into an array map value, valid and aligned
        // for the program's lifetime.
        unsafe { xadd(p, 1) };
    }
}

/// Adds one to `*p` and returns what it held.
#[inline(always)]
pub fn fetch_add(p: *mut u64) -> u64 {
    // Not Relaxed: LLVM's BPF backend lowers a relaxed add to the add that
    // returns nothing (BPF_ADD without BPF_FETCH), whatever uses its result.
    // SAFETY: callers pass an array map value pointer, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 1) }
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
