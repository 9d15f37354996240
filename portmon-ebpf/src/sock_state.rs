//! What portmon remembers of a socket between its hooks, by socket cookie,
//! for the sockets that need it: explicitly bound ones, listeners, and UDP
//! sockets connecting unbound. TCP clients, the bulk, are never entered.
//!
//! A preallocated hash, not socket local storage: measured here, creating
//! socket storage costs ~700 ns (two allocations, and an RCU-deferred free
//! when the socket goes); a free-list insert and delete cost a fraction.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    },
    macros::map,
    maps::HashMap,
};
use portmon_common::{
    capacity, errno, op, pending, proto, role, slot, FailureEvent, Owner, PortKey, SockState,
};

use crate::maps::{add, count_health, Delta, FAILURES, OWNERS};

#[map]
static SOCKETS: HashMap<u64, SockState> = HashMap::with_max_entries(capacity::SOCKETS, 0);

const EMPTY: SockState = SockState {
    pending_addr: [0; 16],
    local_port: 0,
    remote_port: 0,
    pending_port: 0,
    pending: pending::NONE,
    flags: 0,
    family: 0,
    proto: 0,
    _pad: [0; 6],
};

/// The state of the socket with this cookie, created empty if `create`; a
/// full table is counted.
#[inline(always)]
pub fn state(cookie: u64, create: bool) -> Option<&'static mut SockState> {
    let mut p = SOCKETS.get_ptr_mut(cookie);
    if p.is_none() && create {
        // NOEXIST: the socket's own hooks are serialised by its lock, so a
        // failure here means the table is full.
        if SOCKETS.insert(cookie, EMPTY, u64::from(BPF_NOEXIST)).is_err() {
            count_health(slot::SOCKETS_OVERFLOW);
            return None;
        }
        p = SOCKETS.get_ptr_mut(cookie);
    }
    // SAFETY: a map value pointer is valid for this program run.
    p.map(|p| unsafe { &mut *p })
}

/// Forgets a socket.
#[inline(always)]
pub fn forget(cookie: u64) {
    let _ = SOCKETS.remove(cookie);
}

/// The key of one of the socket's ports.
#[inline(always)]
pub fn key(netns: u64, proto: u8, family: u8, port: u16, role: u8) -> PortKey {
    PortKey {
        netns,
        port,
        proto,
        family,
        role,
        _pad: [0; 3],
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
/// its release.
#[inline(always)]
pub fn settle(st: &mut SockState, netns: u64, cookie: u64, bound_port: u16) {
    match st.pending {
        pending::BIND if bound_port == 0 => report(st, netns, cookie, op::BIND, errno::UNRESOLVED),
        pending::UDP_CONNECT if bound_port == 0 => report(st, netns, cookie, op::CONNECT, errno::EAGAIN),
        pending::UDP_CONNECT => {
            add(
                &key(netns, proto::UDP, st.family, bound_port, role::LOCAL),
                Delta {
                    connects: 1,
                    ..Delta::default()
                },
            );
            add(
                &key(netns, proto::UDP, st.family, st.pending_port, role::REMOTE),
                Delta {
                    connects: 1,
                    ..Delta::default()
                },
            );
        }
        _ => {}
    }
    st.pending = pending::NONE;
}

/// Sends the socket's pending operation as a failure. The current task is
/// the one that tried it, or (for a failure settled at close) the one
/// closing the socket, which is the same process but in rare cases.
#[inline(always)]
fn report(st: &SockState, netns: u64, cookie: u64, op: u8, errno: u32) {
    let mut event = current_failure(errno, op, st.proto, st.family);
    event.netns = netns;
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

/// Records the current task as the owner of a socket.
#[inline(always)]
pub fn record_owner(cookie: u64, netns: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let owner = Owner {
        netns,
        // SAFETY: the helper takes no arguments and cannot fail.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        pid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
    };
    let _ = OWNERS.insert(cookie, owner, 0);
}
