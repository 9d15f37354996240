//! cgroup `sock` hooks: a bind that succeeded, and a socket being closed.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock,
    programs::SockContext,
    EbpfContext,
};
use portmon_common::{pending, proto, role, sock_flag::BOUND_TO_ZERO};

use crate::{
    maps::{add, Delta, OWNERS},
    sock_state::{forget, key, record_owner, settle, state},
    ALLOW,
};

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_post_bind(&ctx);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_post_bind(&ctx);
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_release(&ctx);
    ALLOW
}

#[inline(always)]
fn netns(ctx: &SockContext) -> u64 {
    // SAFETY: the helper accepts a cgroup sock context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn cookie(ctx: &SockContext) -> u64 {
    // SAFETY: the helper accepts a cgroup sock context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn on_post_bind(ctx: &SockContext) {
    // SAFETY: the kernel passes a valid full socket to cgroup sock programs.
    let sk = unsafe { &*ctx.sock };
    let proto = match sk.protocol {
        p if p == u32::from(proto::TCP) => proto::TCP,
        p if p == u32::from(proto::UDP) => proto::UDP,
        _ => return,
    };
    // Runs only once get_port() succeeded, with inet_num set to the port
    // actually bound, so bind(0) shows the port the kernel chose
    // (`__inet_bind`, net/ipv4/af_inet.c; `__inet6_bind`, net/ipv6/af_inet6.c).
    let port = sk.src_port as u16;
    let family = sk.family as u8;
    let cookie = cookie(ctx);
    let Some(st) = state(cookie, true) else { return };
    let asked = if st.pending == pending::BIND {
        st.pending_port
    } else {
        port
    };
    st.pending = pending::NONE;
    if asked == 0 {
        st.flags |= BOUND_TO_ZERO;
    }
    let netns = netns(ctx);
    let live = if st.local_port == port { 0 } else { 1 };
    add(
        &key(netns, proto, family, port, role::LOCAL),
        Delta {
            binds: 1,
            live,
            ..Delta::default()
        },
    );
    st.local_port = port;
    st.family = family;
    st.proto = proto;
    // Servers bind fixed ports; who they are is worth a map entry.
    if asked != 0 {
        record_owner(cookie, netns);
    }
}

/// Offset of `skc_num` (the local port, host order) in `struct sock_common`
/// (include/net/sock.h): after skc_addrpair (8 bytes), skc_hash (4) and
/// skc_dport (2). These first bytes have kept their layout since Linux
/// 2.6.38: socket lookups compare them as words.
const SKC_NUM_OFFSET: usize = 14;

/// The socket's local port in `sock_release`, where the kernel does not
/// let the program read `src_port` from its context
/// (`__sock_filter_check_attach_type`, net/core/filter.c); the context is
/// the `struct sock` itself, so the port is read from it directly.
#[inline(always)]
fn local_port(ctx: &SockContext) -> u16 {
    // SAFETY: the address is inside the socket the kernel passed; the helper
    // checks the read and fails cleanly otherwise.
    unsafe { bpf_probe_read_kernel(ctx.sock.cast::<u8>().add(SKC_NUM_OFFSET).cast::<u16>()) }.unwrap_or(0)
}

/// The release hook fires for every socket closed, accepted ones and ones
/// older than portmon included (`inet_release`, net/ipv4/af_inet.c): only
/// those with state have something to give back.
#[inline(always)]
fn on_release(ctx: &SockContext) {
    let cookie = cookie(ctx);
    let Some(st) = state(cookie, false) else { return };
    let netns = netns(ctx);
    if st.pending != pending::NONE {
        settle(st, netns, cookie, local_port(ctx));
    }
    if st.local_port != 0 {
        add(
            &key(netns, st.proto, st.family, st.local_port, role::LOCAL),
            Delta {
                live: -1,
                ..Delta::default()
            },
        );
    }
    if st.remote_port != 0 {
        add(
            &key(netns, st.proto, st.family, st.remote_port, role::REMOTE),
            Delta {
                live: -1,
                ..Delta::default()
            },
        );
    }
    // Its owner goes with it: left to the LRU, stale owners of churning
    // sockets would push out those of long-lived listeners.
    let _ = OWNERS.remove(cookie);
    forget(cookie);
}
