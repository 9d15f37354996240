//! The table of sockets portmon follows: those that user space reads a slot
//! of (bound by bind(), listening, with their owner) and those with an
//! operation whose outcome is not yet known (a bind, a UDP connect that
//! auto-binds). Accepted sockets and TCP clients are never entered.
//!
//! Two arrays, not a hash map: `SOCKET_COOKIES` says which socket holds each
//! slot, seven to a cache line, and `SOCKETS` holds the slots. A socket's
//! slot is in the group its cookie indexes, or else in a hashed second
//! group, which its first group then counts. Cookies are handed out in
//! sequence, so a socket's first group is the last socket's, still in the
//! cache, and one line answers for a socket portmon does not follow. A hash
//! map insert or delete, let alone creating socket local storage, costs more
//! than a whole program run otherwise does (figures in docs/performance.md).
//! User space maps both arrays read-only.
//!
//! Every namespace shares the slots, so an unprivileged user's slots are
//! charged to its quota (`owner_quota`), and `SOCKET_OWNERS` says whom each
//! slot is charged to, for the program that frees it to give it back.

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated,
    },
    macros::map,
    maps::Array,
};
use portmon_common::{
    assigned, capacity, errno, kind, op, pending, proto, slot, sock_flag, FailureEvent, SockSlot,
    SocketGroup, SLOTS_PER_GROUP, SOCKETS_PER_GROUP,
};

use crate::{
    count::{count, count_assigned},
    counter_maps::{count_health, xadd, FAILURES},
    netns::Netns,
    owner_quota::{self, Entry},
};

#[map]
static SOCKET_COOKIES: Array<SocketGroup> =
    Array::with_max_entries(capacity::SOCKETS / SLOTS_PER_GROUP as u32, BPF_F_MMAPABLE);

#[map]
static SOCKETS: Array<SockSlot> = Array::with_max_entries(capacity::SOCKETS, BPF_F_MMAPABLE);

/// Apart from `SOCKETS`, whose 64-byte slots have no room for it.
#[map]
static SOCKET_OWNERS: Array<u32> = Array::with_max_entries(capacity::SOCKETS, 0);

/// Groups in `SOCKET_COOKIES` minus one; set by the loader with the capacity.
#[unsafe(no_mangle)]
static PORTMON_SOCKET_GROUPS_MASK: u32 = capacity::SOCKETS / SLOTS_PER_GROUP as u32 - 1;

/// A slot held by one socket.
pub struct Tracked {
    pub slot: &'static mut SockSlot,
    cookie: u64,
    index: u32,
}

/// The socket's first group, and its second.
#[inline(always)]
fn groups(cookie: u64) -> (u32, u32) {
    // SAFETY: a plain read of a static; volatile so the compiler keeps it
    // for the loader to set.
    let mask = unsafe { core::ptr::read_volatile(&raw const PORTMON_SOCKET_GROUPS_MASK) };
    let near = (cookie / SOCKETS_PER_GROUP as u64) as u32;
    // Fibonacci hashing: spreads the long-lived sockets of one burst (a
    // connection pool) over the table when their first groups are full.
    let far = (cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
    (near & mask, far & mask)
}

#[inline(always)]
fn at(cookie: u64, group: u32, i: usize) -> Option<Tracked> {
    let index = group * SLOTS_PER_GROUP as u32 + i as u32;
    let slot = SOCKETS.get_ptr_mut(index)?;
    Some(Tracked {
        // SAFETY: a map value pointer, valid for this program run; the
        // socket's own hooks run one at a time (the socket lock, or the
        // state machine), and only they write its slot.
        slot: unsafe { &mut *slot },
        cookie,
        index,
    })
}

/// Where in `group` the socket with this cookie is.
#[inline(always)]
fn position(group: &SocketGroup, cookie: u64) -> Option<usize> {
    group.cookies.iter().position(|held| *held == cookie)
}

/// The slot of the socket with this cookie, if portmon follows it.
#[inline(always)]
pub fn find(cookie: u64) -> Option<Tracked> {
    if cookie == 0 {
        return None;
    }
    let (near, far) = groups(cookie);
    let first = SOCKET_COOKIES.get(near)?;
    if let Some(i) = position(first, cookie) {
        return at(cookie, near, i);
    }
    if first.displaced == 0 {
        return None;
    }
    let second = SOCKET_COOKIES.get(far)?;
    position(second, cookie).and_then(|i| at(cookie, far, i))
}

/// Takes a free slot of `group` for `cookie`. Two CPUs may reach one free
/// slot at once: only the exchange that finds it still free takes it.
#[inline(always)]
fn take(group: *mut SocketGroup, cookie: u64) -> Option<usize> {
    for i in 0..SOCKETS_PER_GROUP {
        // SAFETY: `i` is below the group's length; the pointer is into a map
        // value, 8-byte aligned, valid for this run.
        let held = unsafe { (&raw mut (*group).cookies).cast::<u64>().add(i) };
        // SAFETY: as above.
        if unsafe { *held } != 0 {
            continue;
        }
        // SAFETY: as above.
        let (_, taken) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(held, 0, cookie)
        };
        if taken {
            return Some(i);
        }
    }
    None
}

/// Takes a slot for `cookie` in its first group or else its second;
/// `None` (counted) when both are full.
#[inline(always)]
fn claim(cookie: u64) -> Option<Tracked> {
    let (near, far) = groups(cookie);
    let first = SOCKET_COOKIES.get_ptr_mut(near)?;
    match take(first, cookie) {
        Some(i) => at(cookie, near, i),
        None => {
            // Counted before the slot is taken, so that a reader who finds
            // the count at zero can trust the second group holds nothing.
            // SAFETY: a map value pointer, 8-byte aligned.
            let displaced = unsafe { &raw mut (*first).displaced };
            // SAFETY: as above.
            unsafe { xadd(displaced, 1) };
            let taken = SOCKET_COOKIES
                .get_ptr_mut(far)
                .and_then(|second| take(second, cookie));
            match taken {
                Some(i) => at(cookie, far, i),
                None => {
                    // SAFETY: as above.
                    unsafe { xadd(displaced, u64::MAX) };
                    count_health(slot::SOCKETS_OVERFLOW);
                    None
                }
            }
        }
    }
}

/// Whose a claimed slot says the socket is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A bind() to a fixed port, a service's, kept for long: the command,
    /// pid and cgroup of the caller, now.
    Record,
    /// A client's bind(0) or auto-binding connect(), usually gone within
    /// milliseconds: nobody asks its owner, and the three helpers cost as
    /// much as the rest of the claim. Should it listen, the state
    /// tracepoint records its owner then (`record_owner`).
    Later,
}

/// The socket's slot, taken now if it has none; `None` (counted) when both
/// of its groups are full, or its user holds its quota of slots.
#[inline(always)]
pub fn find_or_claim(cookie: u64, netns: u64, family: u8, proto: u8, owner: Owner) -> Option<Tracked> {
    if let Some(tracked) = find(cookie) {
        return Some(tracked);
    }
    // Charged before a slot is taken, so that a user's claims racing on
    // many CPUs never hold more than its quota.
    let user = owner_quota::Owner::current();
    if let Some(user) = user {
        if !user.charge(Entry::Socket) {
            count_health(slot::SOCKETS_OVERFLOW);
            return None;
        }
    }
    let Some(tracked) = claim(cookie) else {
        if let Some(user) = user {
            user.refund(Entry::Socket);
        }
        return None;
    };
    if let Some(charged) = SOCKET_OWNERS.get_ptr_mut(tracked.index) {
        // SAFETY: a map value pointer, valid for this run; only the
        // slot's holder writes it.
        unsafe { *charged = user.map_or(0, owner_quota::Owner::recorded_as) };
    }
    // Field by field: a whole `SockSlot` would be built on the stack and
    // copied (a memset and a memcpy per claim). Volatile where neighbours
    // are zeroed, or LLVM merges the stores into a call to the BPF
    // object's `memset`. `pending_addr` is written by whoever opens an
    // operation, before anything reads it.
    let st = &mut *tracked.slot;
    st.netns = netns;
    match owner {
        Owner::Record => record_owner(st),
        // `pid` 0 is "no owner" to user space; the name and cgroup of the
        // slot's last holder stay until an owner is recorded, and nothing
        // reads them without a pid.
        // SAFETY: a field of a map value, aligned.
        Owner::Later => unsafe { core::ptr::write_volatile(&raw mut st.pid, 0) },
    }
    // SAFETY: fields of a map value, aligned.
    unsafe {
        core::ptr::write_volatile(&raw mut st.local_port, 0);
        core::ptr::write_volatile(&raw mut st.remote_port, 0);
        core::ptr::write_volatile(&raw mut st.pending_port, 0);
    }
    st.family = family;
    st.proto = proto;
    st.flags = 0;
    st.pending = pending::NONE;
    st.released = 0;
    Some(tracked)
}

/// Records the current task as the socket's owner: command, pid, cgroup.
#[inline(always)]
pub fn record_owner(st: &mut SockSlot) {
    // SAFETY: the helper takes no arguments and cannot fail.
    st.cgroup = unsafe { bpf_get_current_cgroup_id() };
    // Straight into the slot: the helper pads the name with zeros, and
    // zeroes it all if it fails. The wrapper's stack copy costs a memset
    // call and a copy.
    // SAFETY: 16 writable bytes of a map value.
    unsafe {
        generated::bpf_get_current_comm((&raw mut st.comm).cast(), 16);
    }
    st.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
}

/// Gives the slot back. The fields user space counts go to zero first, so
/// that a reader never sees this socket's ports under the next one's cookie.
/// Two programs may give back one slot at once (a close in softirq, the
/// release hook in the process): only the one whose exchange clears the
/// cookie counts it out of its first group and gives back its charge.
#[inline(always)]
pub fn free(tracked: Tracked) {
    tracked.slot.flags = 0;
    tracked.slot.pending = pending::NONE;
    tracked.slot.local_port = 0;
    tracked.slot.remote_port = 0;
    tracked.slot.pid = 0;
    // Read before the slot can go to another socket: only a claim writes
    // it, and none can until the cookie is cleared below.
    let charged = SOCKET_OWNERS.get(tracked.index).copied().unwrap_or(0);
    let group = tracked.index / SLOTS_PER_GROUP as u32;
    let i = tracked.index as usize % SLOTS_PER_GROUP;
    let Some(cookies) = SOCKET_COOKIES.get_ptr_mut(group) else {
        return;
    };
    if i >= SOCKETS_PER_GROUP {
        return;
    }
    // SAFETY: `i` is below the group's length; a map value pointer, 8-byte
    // aligned, valid for this run.
    let (_, cleared) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(
            (&raw mut (*cookies).cookies).cast::<u64>().add(i),
            tracked.cookie,
            0,
        )
    };
    if !cleared {
        return;
    }
    if let Some(user) = owner_quota::Owner::recorded(charged) {
        user.refund(Entry::Socket);
    }
    let (near, _) = groups(tracked.cookie);
    if group != near {
        if let Some(first) = SOCKET_COOKIES.get_ptr_mut(near) {
            // SAFETY: a map value pointer, 8-byte aligned.
            unsafe { xadd(&raw mut (*first).displaced, u64::MAX) };
        }
    }
}

/// Decides the pending operation now that the socket is seen again with
/// local port `bound_port` (0: none).
///
/// A failed bind leaves no port (`__inet_bind` in net/ipv4/af_inet.c clears
/// the address it had set when `get_port` fails), and a UDP connect whose
/// auto-bind failed returned EAGAIN before connecting (`inet_dgram_connect`,
/// same file). No hook runs after either syscall returns, so this is the
/// first moment the outcome is known: the socket's next bind, connect or
/// its release. `ns` is the socket's namespace; its cookie is the slot's.
#[inline(always)]
pub fn settle(tracked: &mut Tracked, ns: Netns, bound_port: u16) {
    let cookie = tracked.cookie;
    let st = &mut *tracked.slot;
    match st.pending {
        pending::BIND if bound_port == 0 => report(st, cookie, op::BIND, errno::UNRESOLVED),
        pending::UDP_CONNECT if bound_port == 0 => report(st, cookie, op::CONNECT, errno::EAGAIN),
        pending::UDP_CONNECT => {
            let ns = ns.with_cookie(st.netns);
            count_assigned(ns, proto::UDP, st.family, assigned::AUTOBIND);
            count(ns, proto::UDP, st.family, kind::CONNECTS_TO, st.pending_port);
            st.local_port = bound_port;
            st.remote_port = st.pending_port;
            st.flags |= sock_flag::AUTOBOUND | sock_flag::CONNECTED;
        }
        _ => {}
    }
    st.pending = pending::NONE;
}

/// Sends the socket's pending operation as a failure. The current task is
/// the one that tried it, or (for a failure settled at close) the one
/// closing the socket, which is the same process but in rare cases.
#[inline(always)]
fn report(st: &SockSlot, cookie: u64, op: u8, errno: u32) {
    let mut event = current_failure(errno, op, st.proto, st.family);
    event.netns = st.netns;
    event.socket_cookie = cookie;
    event.addr = st.pending_addr;
    event.port = st.pending_port;
    send_failure(&event);
}

/// A failure event with the current task's identity filled in.
#[inline(always)]
pub fn current_failure(errno: u32, op: u8, proto: u8, family: u8) -> FailureEvent {
    let pid_tgid = bpf_get_current_pid_tgid();
    FailureEvent {
        netns: 0,
        // SAFETY: the helper takes no arguments and cannot fail.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
        socket_cookie: 0,
        addr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        errno,
        port: 0,
        family,
        proto,
        op,
        _pad: [0; 3],
    }
}

/// Sends one failure to user space, counting it whether or not it fits.
#[inline(always)]
pub fn send_failure(event: &FailureEvent) {
    count_health(slot::FAILURES_SEEN);
    if FAILURES.output::<FailureEvent>(event, 0).is_err() {
        count_health(slot::EVENTS_DROPPED);
    }
}
