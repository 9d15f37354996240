//! `sock:inet_sock_set_state`: the one place a TCP connect that ran out of
//! local ports shows, since the kernel offers no hook after connect() fails.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::tracepoint,
    programs::TracePointContext,
};
use portmon_common::{errno, op, proto, FailureEvent};

use crate::{maps::CONNECTING, record::send_failure};

// Offsets in the tracepoint's record, from its format file
// (events/sock/inet_sock_set_state/format), unchanged since Linux 4.16.
const OLDSTATE: usize = 16;
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const PROTOCOL: usize = 30;

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: the offsets are within the record, per its format file.
    let (old, new, sport, protocol) = unsafe {
        (
            ctx.read_at::<i32>(OLDSTATE)?,
            ctx.read_at::<i32>(NEWSTATE)?,
            ctx.read_at::<u16>(SPORT)?,
            ctx.read_at::<u16>(PROTOCOL)?,
        )
    };
    // tcp_v4_connect/tcp_v6_connect (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c)
    // enter SYN_SENT before inet_hash_connect() and fall back to CLOSE with
    // no local port only when it fails: __inet_hash_connect
    // (net/ipv4/inet_hashtables.c) found no free port, EADDRNOTAVAIL.
    if old != TCP_SYN_SENT || new != TCP_CLOSE || sport != 0 || protocol != u16::from(proto::TCP) {
        return Ok(());
    }
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(attempt) = (unsafe { CONNECTING.get(&tid) }).copied() else { return Ok(()) };
    let _ = CONNECTING.remove(&tid);
    send_failure(&FailureEvent {
        netns: attempt.netns,
        // SAFETY: the helper takes no arguments and cannot fail.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
        socket_cookie: attempt.socket_cookie,
        addr: attempt.addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        pid: (tid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        errno: errno::EADDRNOTAVAIL,
        port: attempt.port,
        family: attempt.family,
        proto: proto::TCP,
        op: op::CONNECT,
        _pad: [0; 7],
    });
    Ok(())
}
