//! The counters every program shares: per-port blocks, portmon's health,
//! bind-before-connect by command, and the failure ring buffer.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use portmon_common::{capacity, slot, PortBlock, PortBlockKey, PORTS_PER_BLOCK};

// Preallocated: an insert takes an element from a per-CPU free list instead
// of allocating. Blocks of neighbouring ports, because a connect's ephemeral
// port neighbours the last one's: the block's bucket and counters are still
// in the cache, where one entry per port would miss on each new port.
#[map]
static PORT_STATS: HashMap<PortBlockKey, PortBlock> = HashMap::with_max_entries(capacity::PORT_STATS, 0);

#[map]
static BIND_BEFORE_CONNECT: HashMap<[u8; 16], u64> =
    HashMap::with_max_entries(capacity::BIND_BEFORE_CONNECT, 0);

#[map]
pub static FAILURES: RingBuf = RingBuf::with_byte_size(capacity::FAILURES_BYTES, 0);

#[map]
static HEALTH: Array<u64> = Array::with_max_entries(slot::COUNT, 0);

// A static, not a const: the insert's value must not be copied to the
// 512-byte stack.
static EMPTY_BLOCK: PortBlock = PortBlock {
    counts: [0; PORTS_PER_BLOCK],
};

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
pub fn count(netns: u64, proto: u8, family: u8, kind: u8, port: u16) {
    let key = PortBlockKey {
        netns,
        block: port / PORTS_PER_BLOCK as u16,
        proto,
        family,
        kind,
        _pad: [0; 3],
    };
    let block = match PORT_STATS.get_ptr_mut(key) {
        Some(block) => block,
        None => {
            // Another CPU may insert the same key first: NOEXIST then fails
            // and the second lookup finds its entry.
            #[expect(
                clippy::needless_borrows_for_generic_args,
                reason = "by value, the 512-byte block would be copied to the 512-byte stack"
            )]
            let _ = PORT_STATS.insert(key, &EMPTY_BLOCK, u64::from(BPF_NOEXIST));
            match PORT_STATS.get_ptr_mut(key) {
                Some(block) => block,
                None => return count_health(slot::PORT_STATS_OVERFLOW),
            }
        }
    };
    let index = usize::from(port) % PORTS_PER_BLOCK;
    // SAFETY: a map value pointer, valid for this run; `index` is below
    // PORTS_PER_BLOCK and each counter is 8-byte aligned.
    unsafe { xadd((&raw mut (*block).counts).cast::<u64>().add(index), 1) };
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
