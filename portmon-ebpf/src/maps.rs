//! The maps, and the counting every program shares.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use portmon_common::{capacity, slot, Owner, PortKey, PortStats};

// Preallocated: an insert takes an element from a per-CPU free list instead
// of allocating, which matters when every bind(0) meets a new port. A full
// map is counted (`slot::PORT_STATS_OVERFLOW`), not fatal.
#[map]
pub static PORT_STATS: HashMap<PortKey, PortStats> = HashMap::with_max_entries(capacity::PORT_STATS, 0);

// LRU: owners are recorded for fixed-port binds and listens only, and an
// owner of a long-closed socket is the right one to forget first.
#[map]
pub static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(capacity::OWNERS, 0);

#[map]
pub static BIND_BEFORE_CONNECT: HashMap<[u8; 16], u64> =
    HashMap::with_max_entries(capacity::BIND_BEFORE_CONNECT, 0);

#[map]
pub static FAILURES: RingBuf = RingBuf::with_byte_size(capacity::FAILURES_BYTES, 0);

#[map]
pub static HEALTH: Array<u64> = Array::with_max_entries(slot::COUNT, 0);

/// Adds one to a health counter.
#[inline(always)]
pub fn count_health(slot: u32) {
    if let Some(p) = HEALTH.get_ptr_mut(slot) {
        // SAFETY: the pointer is into an array map value, valid and aligned
        // for the program's lifetime.
        unsafe { xadd(p, 1) };
    }
}

/// The counters of one port, created at zero if new; `None` (counted) when
/// the map is full.
#[inline(always)]
fn port_stats(key: &PortKey) -> Option<*mut PortStats> {
    if let Some(p) = PORT_STATS.get_ptr_mut(key) {
        return Some(p);
    }
    // Another CPU may insert the same key first: NOEXIST then fails and the
    // second lookup finds its entry.
    let _ = PORT_STATS.insert(key, ZERO_STATS, u64::from(BPF_NOEXIST));
    let p = PORT_STATS.get_ptr_mut(key);
    if p.is_none() {
        count_health(slot::PORT_STATS_OVERFLOW);
    }
    p
}

const ZERO_STATS: PortStats = PortStats {
    binds: 0,
    listens: 0,
    connects: 0,
    live: 0,
};

/// Changes to one port's counters, applied with one lookup.
#[derive(Clone, Copy, Default)]
pub struct Delta {
    pub binds: u64,
    pub listens: u64,
    pub connects: u64,
    pub live: i64,
}

/// Applies `delta` to the counters of `key`.
#[inline(always)]
pub fn add(key: &PortKey, delta: Delta) {
    let Some(p) = port_stats(key) else { return };
    // SAFETY: `p` points into a live map value; each field is 8-byte aligned
    // (`PortStats` is #[repr(C)] of 64-bit integers).
    unsafe {
        if delta.binds != 0 {
            xadd(&raw mut (*p).binds, delta.binds);
        }
        if delta.listens != 0 {
            xadd(&raw mut (*p).listens, delta.listens);
        }
        if delta.connects != 0 {
            xadd(&raw mut (*p).connects, delta.connects);
        }
        if delta.live != 0 {
            xadd((&raw mut (*p).live).cast::<u64>(), delta.live as u64);
        }
    }
}

/// An atomic add whose result is unused, which LLVM lowers to the BPF
/// atomic add instruction. `core::sync::atomic` has no 64-bit atomics for
/// the BPF target, hence the intrinsic. Two's complement makes adding
/// `-1 as u64` a decrement of the signed `live` field.
///
/// # Safety
/// `p` must be valid and 8-byte aligned.
#[inline(always)]
pub unsafe fn xadd(p: *mut u64, delta: u64) {
    // SAFETY: upheld by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
}
