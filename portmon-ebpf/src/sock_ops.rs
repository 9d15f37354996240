//! TCP from `sock_ops`: a connection that is up, one that closed, a socket
//! that listens. The kernel calls this program for every TCP callback of
//! every socket, so everything but these three returns at once.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext,
};
use portmon_common::{proto, role};

use crate::{
    maps::{add, Delta, OWNERS},
    sock_state::{key, record_owner, state},
};

const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if crate::hooks_only() {
        return 1;
    }
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        // Only sockets flagged in on_established get this callback.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => on_close(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
        _ => {}
    }
    // The return value only matters to callbacks that ask for a reply.
    1
}

#[inline(always)]
fn netns(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper accepts a sock_ops context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// `remote_port` holds the 16-bit network-order port in its upper half.
#[inline(always)]
fn remote_port(ctx: &SockOpsContext) -> u16 {
    u32::from_be(ctx.remote_port()) as u16
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper accepts a sock_ops context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// A connection's namespace, family, local port and remote port.
#[inline(always)]
fn connection(ctx: &SockOpsContext) -> (u64, u8, u16, u16) {
    (
        netns(ctx),
        ctx.family() as u8,
        ctx.local_port() as u16,
        remote_port(ctx),
    )
}

/// Whether the socket's local port is already held in the live counts by
/// its explicit bind (then its release gives it back).
#[inline(always)]
fn bound_explicitly(ctx: &SockOpsContext, port: u16) -> bool {
    state(cookie(ctx), false).is_some_and(|st| st.local_port == port)
}

/// The SYN-ACK arrived (`tcp_finish_connect`, net/ipv4/tcp_input.c): the
/// connect succeeded. Flags the socket for state callbacks, so its close is
/// seen without any table: the flag lives in the socket.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    let (netns, family, local, remote) = connection(ctx);
    let live = if bound_explicitly(ctx, local) { 0 } else { 1 };
    add(
        &key(netns, proto::TCP, family, local, role::LOCAL),
        Delta {
            connects: 1,
            live,
            ..Delta::default()
        },
    );
    add(
        &key(netns, proto::TCP, family, remote, role::REMOTE),
        Delta {
            connects: 1,
            live: 1,
            ..Delta::default()
        },
    );
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// A flagged connection reached CLOSE (`tcp_set_state`, net/ipv4/tcp.c,
/// calls back before unhashing, so the ports are still set).
#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    let (netns, family, local, remote) = connection(ctx);
    let _ = OWNERS.remove(cookie(ctx));
    if !bound_explicitly(ctx, local) {
        add(
            &key(netns, proto::TCP, family, local, role::LOCAL),
            Delta {
                live: -1,
                ..Delta::default()
            },
        );
    }
    add(
        &key(netns, proto::TCP, family, remote, role::REMOTE),
        Delta {
            live: -1,
            ..Delta::default()
        },
    );
}

/// `listen()` succeeded (`__inet_listen_sk`, net/ipv4/af_inet.c), in the
/// caller's context; a socket listening without bind() got its port here.
#[inline(always)]
fn on_listen(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let Some(st) = state(cookie, true) else { return };
    let (netns, family, port) = (netns(ctx), ctx.family() as u8, ctx.local_port() as u16);
    let live = if st.local_port == port { 0 } else { 1 };
    add(
        &key(netns, proto::TCP, family, port, role::LOCAL),
        Delta {
            listens: 1,
            live,
            ..Delta::default()
        },
    );
    st.local_port = port;
    st.family = family;
    st.proto = proto::TCP;
    record_owner(cookie, netns);
}
