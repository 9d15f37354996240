//! Per-socket bookkeeping shared by the hooks: who the socket belongs to,
//! which ports it holds in the live counts, and the operation whose outcome
//! is still to show.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid,
};
use portmon_common::{
    errno, op, pending, role, slot, FailureEvent, PortKey, SockRecord,
};

use crate::maps::{add, count_health, Field, FAILURES, SOCKETS};

/// A fresh record for a socket, owned by the current task.
#[inline(always)]
pub fn new_record(netns: u64, family: u8, proto: u8) -> SockRecord {
    let mut rec = SockRecord {
        netns,
        cgroup: 0,
        pending_addr: [0; 16],
        comm: [0; 16],
        pid: 0,
        uid: 0,
        local_port: 0,
        remote_port: 0,
        pending_port: 0,
        family,
        proto,
        pending: pending::NONE,
        _pad: [0; 7],
    };
    own(&mut rec);
    rec
}

/// Makes the current task the socket's owner. Only called from hooks that
/// run in the context of the process calling bind/listen/connect.
#[inline(always)]
pub fn own(rec: &mut SockRecord) {
    rec.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    rec.uid = bpf_get_current_uid_gid() as u32;
    rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: the helper takes no arguments and cannot fail.
    rec.cgroup = unsafe { bpf_get_current_cgroup_id() };
}

/// The record of a socket, if portmon saw it before.
#[inline(always)]
pub fn lookup(cookie: u64) -> Option<SockRecord> {
    // SAFETY: the value is copied out at once; the map never hands out a
    // dangling pointer inside one program run.
    unsafe { SOCKETS.get(&cookie) }.copied()
}

/// Stores a record; a full map is counted.
#[inline(always)]
pub fn store(cookie: u64, rec: &SockRecord) {
    if SOCKETS.insert(&cookie, rec, 0).is_err() {
        count_health(slot::SOCKETS_OVERFLOW);
    }
}

#[inline(always)]
fn key(rec: &SockRecord, port: u16, role: u8) -> PortKey {
    PortKey { netns: rec.netns, port, proto: rec.proto, family: rec.family, role, _pad: [0; 3] }
}

/// Counts one event on one of the socket's ports.
#[inline(always)]
pub fn count(rec: &SockRecord, port: u16, role: u8, field: Field) {
    add(&key(rec, port, role), field, 1);
}

/// Makes `port` the socket's local port in the live counts.
#[inline(always)]
pub fn hold_local(rec: &mut SockRecord, port: u16) {
    if rec.local_port == port {
        return;
    }
    if rec.local_port != 0 {
        add(&key(rec, rec.local_port, role::LOCAL), Field::Live, -1);
    }
    add(&key(rec, port, role::LOCAL), Field::Live, 1);
    rec.local_port = port;
}

/// Makes `port` the socket's remote port in the live counts (a UDP socket
/// may connect again, elsewhere).
#[inline(always)]
pub fn hold_remote(rec: &mut SockRecord, port: u16) {
    if rec.remote_port == port {
        return;
    }
    if rec.remote_port != 0 {
        add(&key(rec, rec.remote_port, role::REMOTE), Field::Live, -1);
    }
    add(&key(rec, port, role::REMOTE), Field::Live, 1);
    rec.remote_port = port;
}

/// Gives back every port the socket holds in the live counts.
#[inline(always)]
pub fn release(rec: &SockRecord) {
    if rec.local_port != 0 {
        add(&key(rec, rec.local_port, role::LOCAL), Field::Live, -1);
    }
    if rec.remote_port != 0 {
        add(&key(rec, rec.remote_port, role::REMOTE), Field::Live, -1);
    }
}

/// A connection from `local` to `remote` is up.
#[inline(always)]
pub fn connected(rec: &mut SockRecord, local: u16, remote: u16) {
    count(rec, local, role::LOCAL, Field::Connects);
    count(rec, remote, role::REMOTE, Field::Connects);
    hold_local(rec, local);
    hold_remote(rec, remote);
}

/// Decides the pending operation now that the socket is seen again with
/// local port `bound_port` (0: none).
///
/// A failed bind leaves no port (`__inet_bind` in net/ipv4/af_inet.c clears
/// the address it had set when `get_port` fails), and a UDP connect whose
/// auto-bind failed returned EAGAIN before connecting (`inet_dgram_connect`,
/// same file). There is no hook after either syscall returns, so this is the
/// first moment the outcome is known: the socket's next bind, connect or
/// its release.
#[inline(always)]
pub fn settle(rec: &mut SockRecord, cookie: u64, bound_port: u16) {
    match rec.pending {
        pending::BIND if bound_port == 0 => report(rec, cookie, op::BIND, errno::UNRESOLVED),
        pending::UDP_CONNECT if bound_port == 0 => report(rec, cookie, op::CONNECT, errno::EAGAIN),
        pending::UDP_CONNECT => {
            let remote = rec.pending_port;
            connected(rec, bound_port, remote)
        }
        _ => {}
    }
    rec.pending = pending::NONE;
}

/// Sends one failure to user space, counting it whether or not it fits.
#[inline(always)]
pub fn report(rec: &SockRecord, cookie: u64, op: u8, errno: u32) {
    send_failure(&FailureEvent {
        netns: rec.netns,
        cgroup: rec.cgroup,
        socket_cookie: cookie,
        addr: rec.pending_addr,
        comm: rec.comm,
        pid: rec.pid,
        uid: rec.uid,
        errno,
        port: rec.pending_port,
        family: rec.family,
        proto: rec.proto,
        op,
        _pad: [0; 7],
    });
}

#[inline(always)]
pub fn send_failure(event: &FailureEvent) {
    count_health(slot::FAILURES_SEEN);
    if FAILURES.output::<FailureEvent>(event, 0).is_err() {
        count_health(slot::EVENTS_DROPPED);
    }
}
