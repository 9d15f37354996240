//! The walk of the host's established-socket hash (portmon-common's `walk`
//! module says why): an iterator over the elements of `WALK_CHUNKS`, each
//! run covering a few buckets. Nothing calls it but a read of the
//! iterator, so it costs the host nothing between scrapes.
//!
//! It reads the table the way the kernel's own lockless lookups do
//! (`__inet_lookup_established`): under RCU, which the iterator holds, down
//! each chain to its nulls marker, which names the bucket the chain ends
//! in. A marker of another bucket means a socket was freed and reused
//! under the walk; that bucket, like one longer than the verifier can
//! follow, is reported as an overflow instead of being read in part.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated as gen},
    macros::map,
    maps::{Array, PerCpuArray},
};
use portmon_common::{
    tcp_state,
    walk::{kind, sock_common as common, Record, WalkLayout, BUCKETS_PER_CHUNK, BUCKET_SIZE, CHAIN_LIMIT},
};

/// Sized by the loader to the table's buckets over `BUCKETS_PER_CHUNK`.
#[map]
static WALK_CHUNKS: Array<u32> = Array::with_max_entries(1, 0);

/// Set by the loader from `/sys/kernel/btf/vmlinux`; all 0 leaves the walk
/// unused.
#[unsafe(no_mangle)]
static PORTMON_WALK_LAYOUT: WalkLayout = WalkLayout {
    task_nsproxy: 0,
    nsproxy_net_ns: 0,
    net_hashinfo: 0,
    net_cookie: 0,
    hashinfo_ehash: 0,
    hashinfo_ehash_mask: 0,
    hashinfo_pernet: 0,
    sk_socket: 0,
    sk_uid: 0,
    socket_ino: 0,
    tw_substate: 0,
    _pad: 0,
};

#[inline(always)]
fn layout() -> WalkLayout {
    // SAFETY: a plain read of a static; volatile so the compiler keeps it
    // for the loader to set.
    unsafe { core::ptr::read_volatile(&raw const PORTMON_WALK_LAYOUT) }
}

/// `struct bpf_iter_meta` (include/linux/bpf.h).
#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__bpf_map_elem` (kernel/bpf/map_iter.c).
#[repr(C)]
struct MapElem {
    meta: *const IterMeta,
    map: *const c_void,
    key: *const u32,
    value: *mut c_void,
}

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The first bucket of the reader's namespace's table and its mask, if
/// that table is the host's shared one.
#[inline(always)]
fn shared_table(l: &WalkLayout) -> Option<(u64, u32)> {
    // SAFETY: the helper returns the current task's address; it is read
    // only through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = read(task, l.task_nsproxy)?;
    let net: u64 = read(nsproxy, l.nsproxy_net_ns)?;
    let hashinfo: u64 = read(net, l.net_hashinfo)?;
    let pernet: u8 = read(hashinfo, l.hashinfo_pernet)?;
    if pernet != 0 {
        return None;
    }
    Some((
        read(hashinfo, l.hashinfo_ehash)?,
        read(hashinfo, l.hashinfo_ehash_mask)?,
    ))
}

/// Room for what one run reads and writes: more than the 512 bytes of
/// stack a program has once the loops are unrolled.
#[repr(C)]
struct Scratch {
    /// The iterator session `table` was read for: one read of the table's
    /// address per walk, not per run.
    session: u64,
    /// The shared table's first bucket and mask; 0 if there is none.
    table: (u64, u32),
    heads: [u64; BUCKETS_PER_CHUNK as usize],
    raw: [u8; common::LEN],
    record: Record,
}

#[map]
static WALK_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Reads `size_of::<T>()` bytes at `addr` into `dst`; false if the helper
/// refused the address.
#[inline(always)]
fn read_into<T>(dst: &mut T, addr: u64) -> bool {
    // SAFETY: the helper writes exactly `size_of::<T>()` bytes to `dst`,
    // and validates `addr`.
    unsafe {
        gen::bpf_probe_read_kernel(
            core::ptr::from_mut(dst).cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        ) == 0
    }
}

#[unsafe(link_section = "iter/bpf_map_elem")]
#[unsafe(no_mangle)]
pub extern "C" fn walk_established(ctx: *const c_void) -> i32 {
    let ctx = ctx.cast::<MapElem>();
    // SAFETY: the kernel passes its `bpf_iter__bpf_map_elem`; `key` is NULL
    // on the last call.
    let (meta, key) = unsafe { ((*ctx).meta, (*ctx).key) };
    if key.is_null() || meta.is_null() {
        return 0;
    }
    // SAFETY: checked non-NULL above; the verifier knows both pointers.
    let (chunk, seq, session) = unsafe { (*key, (*meta).seq, (*meta).session_id) };
    let Some(scratch) = WALK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's entry, which nothing else uses while the program
    // runs.
    let scratch = unsafe { &mut *scratch };
    let l = layout();
    if scratch.session != session || session == 0 {
        scratch.session = session;
        scratch.table = shared_table(&l).unwrap_or((0, 0));
    }
    let (ehash, mask) = scratch.table;
    if ehash == 0 {
        if chunk == 0 {
            scratch.record = marker(kind::NO_TABLE);
            emit(seq, &scratch.record);
        }
        return 0;
    }
    let first = chunk.wrapping_mul(BUCKETS_PER_CHUNK);
    if first > mask || mask - first < BUCKETS_PER_CHUNK - 1 {
        return 0;
    }
    if !read_into(&mut scratch.heads, ehash + u64::from(first * BUCKET_SIZE)) {
        scratch.record = marker(kind::OVERFLOW);
        emit(seq, &scratch.record);
        return 0;
    }
    for i in 0..BUCKETS_PER_CHUNK {
        let head = scratch.heads.get(i as usize).copied().unwrap_or(1);
        walk_chain(seq, &l, scratch, head, first + i);
    }
    0
}

/// Writes a record for every socket of one bucket's chain.
#[inline(always)]
fn walk_chain(seq: *mut c_void, l: &WalkLayout, scratch: &mut Scratch, head: u64, bucket: u32) {
    let mut node = head;
    for _ in 0..CHAIN_LIMIT {
        if node & 1 == 1 {
            // The nulls marker: `1 | bucket << 1`.
            if node >> 1 != u64::from(bucket) {
                scratch.record = marker(kind::OVERFLOW);
                emit(seq, &scratch.record);
            }
            return;
        }
        let sk = node.wrapping_sub(common::SKC_NULLS_NODE as u64);
        if !read_into(&mut scratch.raw, sk) {
            scratch.record = marker(kind::OVERFLOW);
            emit(seq, &scratch.record);
            return;
        }
        let net = u64::from_ne_bytes(eight(&scratch.raw, common::SKC_NET));
        let netns = read(net, l.net_cookie).unwrap_or(0);
        fill(&mut scratch.record, l, sk, &scratch.raw, netns);
        emit(seq, &scratch.record);
        node = u64::from_ne_bytes(eight(&scratch.raw, common::SKC_NULLS_NODE));
    }
    if node & 1 == 0 {
        scratch.record = marker(kind::OVERFLOW);
        emit(seq, &scratch.record);
    }
}

#[inline(always)]
fn fill(r: &mut Record, l: &WalkLayout, sk: u64, raw: &[u8; common::LEN], netns: u64) {
    let family = u16::from_ne_bytes([raw[16], raw[17]]);
    let state = raw[common::SKC_STATE];
    *r = marker(kind::SOCKET);
    r.netns = netns;
    r.cookie = u64::from_ne_bytes(eight(raw, common::SKC_COOKIE));
    r.family = family as u8;
    r.state = state;
    r.local_port = u16::from_ne_bytes([raw[14], raw[15]]);
    r.remote_port = u16::from_be_bytes([raw[12], raw[13]]);
    if family == 10 {
        r.local = sixteen(raw, common::SKC_V6_RCV_SADDR);
        r.remote = sixteen(raw, common::SKC_V6_DADDR);
    } else {
        r.local[..4].copy_from_slice(&raw[common::SKC_RCV_SADDR..common::SKC_RCV_SADDR + 4]);
        r.remote[..4].copy_from_slice(&raw[..4]);
    }
    // TIME_WAIT and request sockets are a `sock_common` and little more;
    // only a full socket has an owner and a file.
    if state == tcp_state::TIME_WAIT {
        r.state = read(sk, l.tw_substate).unwrap_or(state);
    } else if state != tcp_state::NEW_SYN_RECV {
        r.uid = read(sk, l.sk_uid).unwrap_or(0);
        let socket: u64 = read(sk, l.sk_socket).unwrap_or(0);
        if socket != 0 {
            r.inode = read::<u64>(socket, l.socket_ino).unwrap_or(0) as u32;
        }
    }
}

#[inline(always)]
fn eight(raw: &[u8; common::LEN], at: usize) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&raw[at..at + 8]);
    out
}

#[inline(always)]
fn sixteen(raw: &[u8; common::LEN], at: usize) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&raw[at..at + 16]);
    out
}

#[inline(always)]
fn marker(kind: u8) -> Record {
    Record::zeroed(kind)
}

#[inline(always)]
fn emit(seq: *mut c_void, record: &Record) {
    // SAFETY: the seq_file the kernel passed, and a record on the stack. A
    // record that does not fit makes the kernel run this element again in
    // the next read, so the result needs no check.
    unsafe {
        gen::bpf_seq_write(
            seq.cast(),
            core::ptr::from_ref(record).cast(),
            core::mem::size_of::<Record>() as u32,
        );
    }
}
