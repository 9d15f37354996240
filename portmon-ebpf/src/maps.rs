//! The maps, and the counting every program shares.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use portmon_common::{capacity, slot, ConnectAttempt, PortKey, PortStats, SockRecord};

// Hash maps are not preallocated: most hosts use a small part of them, and
// a full one is counted (`slot::*_OVERFLOW`), not fatal.
#[map]
pub static PORT_STATS: HashMap<PortKey, PortStats> =
    HashMap::with_max_entries(capacity::PORT_STATS, BPF_F_NO_PREALLOC);

#[map]
pub static SOCKETS: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(capacity::SOCKETS, BPF_F_NO_PREALLOC);

// LRU: an entry outlives its connect only until the thread connects again,
// and eviction of an old one loses nothing.
#[map]
pub static CONNECTING: LruHashMap<u64, ConnectAttempt> =
    LruHashMap::with_max_entries(capacity::CONNECTING, 0);

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
    let _ = PORT_STATS.insert(key, &ZERO_STATS, u64::from(BPF_NOEXIST));
    let p = PORT_STATS.get_ptr_mut(key);
    if p.is_none() {
        count_health(slot::PORT_STATS_OVERFLOW);
    }
    p
}

const ZERO_STATS: PortStats = PortStats { binds: 0, listens: 0, connects: 0, live: 0 };

/// Which field of `PortStats` to change.
#[derive(Clone, Copy)]
pub enum Field {
    Binds,
    Listens,
    Connects,
    Live,
}

/// Adds `delta` to one counter of one port.
#[inline(always)]
pub fn add(key: &PortKey, field: Field, delta: i64) {
    let Some(p) = port_stats(key) else { return };
    // SAFETY: `p` points into a live map value; each field is 8-byte aligned
    // (`PortStats` is #[repr(C)] of 64-bit integers).
    unsafe {
        let field = match field {
            Field::Binds => &raw mut (*p).binds,
            Field::Listens => &raw mut (*p).listens,
            Field::Connects => &raw mut (*p).connects,
            Field::Live => (&raw mut (*p).live).cast::<u64>(),
        };
        xadd(field, delta as u64);
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
unsafe fn xadd(p: *mut u64, delta: u64) {
    // SAFETY: upheld by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
}
