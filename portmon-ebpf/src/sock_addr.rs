//! cgroup `sock_addr` hooks: bind() and connect() as they are asked for,
//! before the kernel decides. They open the operation in the socket's
//! state; later hooks settle it.

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use portmon_common::{family, pending, proto, role, sock_flag::BOUND_TO_ZERO, SockState};

use crate::{
    maps::{add, count_health, xadd, Delta, BIND_BEFORE_CONNECT},
    sock_state::{key, record_owner, settle, state},
    ALLOW,
};

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_bind(&ctx, family::INET);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_bind(&ctx, family::INET6);
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_connect(&ctx, family::INET);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    if crate::hooks_only() {
        return ALLOW;
    }
    on_connect(&ctx, family::INET6);
    ALLOW
}

/// The transport of a socket portmon watches, if it is one.
#[inline(always)]
fn transport(protocol: u32) -> Option<u8> {
    match protocol {
        p if p == u32::from(proto::TCP) => Some(proto::TCP),
        p if p == u32::from(proto::UDP) => Some(proto::UDP),
        _ => None,
    }
}

/// The address asked for, as bytes in network order.
#[inline(always)]
fn requested_addr(ctx: &SockAddrContext, family: u8) -> [u8; 16] {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    // Each word is in network order already: keep the bytes as they lie.
    let words = if family == family::INET {
        [sa.user_ip4, 0, 0, 0]
    } else {
        sa.user_ip6
    };
    let [a, b, c, d] = words.map(u32::to_ne_bytes);
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]
}

/// The socket, its protocol and the port asked for (host order).
#[inline(always)]
fn request(ctx: &SockAddrContext) -> Option<(*mut bpf_sock, u8, u16)> {
    // SAFETY: as in `requested_addr`; `sk` is a full socket
    // (BPF_CGROUP_RUN_SA_PROG, include/linux/bpf-cgroup.h).
    let sa = unsafe { &*ctx.sock_addr };
    let proto = transport(sa.protocol)?;
    // user_port holds the port as stored in the sockaddr: network order.
    // SAFETY: the union's only member the kernel sets for this context.
    Some((
        unsafe { sa.__bindgen_anon_1.sk },
        proto,
        u16::from_be(sa.user_port as u16),
    ))
}

#[inline(always)]
fn netns(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper accepts a sock_addr context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper accepts a sock_addr context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, family: u8) {
    let Some((sk, proto, port)) = request(ctx) else {
        return;
    };
    // SAFETY: a valid socket pointer for this run.
    let bound_port = unsafe { (*sk).src_port } as u16;
    // A socket that has a port fails bind() with EINVAL (`__inet_bind`
    // checks inet_num): no outcome will follow to wait for.
    if bound_port != 0 {
        return;
    }
    let cookie = cookie(ctx);
    let Some(st) = state(cookie, true) else { return };
    if st.pending != pending::NONE {
        settle(st, netns(ctx), cookie, bound_port);
    }
    st.pending = pending::BIND;
    st.pending_port = port;
    st.pending_addr = requested_addr(ctx, family);
    st.family = family;
    st.proto = proto;
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u8) {
    let Some((sk, proto, port)) = request(ctx) else {
        return;
    };
    // SAFETY: a valid socket pointer for this run.
    let (bound_port, has_addr) = unsafe {
        let sk = &*sk;
        (
            sk.src_port as u16,
            if family == family::INET {
                sk.src_ip4 != 0
            } else {
                sk.src_ip6 != [0; 4]
            },
        )
    };
    let cookie = cookie(ctx);
    // connect() runs in the caller's context, unlike the callbacks that see
    // the connection come up: the one moment to learn who connects.
    record_owner(cookie, netns(ctx));
    if proto == proto::TCP {
        // TCP connects are counted by sock_ops once established; here only
        // sockets portmon already tracks (explicitly bound ones) matter.
        if let Some(st) = state(cookie, false) {
            settle_before_connect(ctx, st, bound_port, has_addr);
        }
        return;
    }
    let Some(st) = state(cookie, true) else {
        return;
    };
    settle_before_connect(ctx, st, bound_port, has_addr);
    st.family = family;
    st.proto = proto;
    if bound_port == 0 {
        st.pending = pending::UDP_CONNECT;
        st.pending_port = port;
        st.pending_addr = requested_addr(ctx, family);
        return;
    }
    let netns = netns(ctx);
    add(
        &key(netns, proto, family, bound_port, role::LOCAL),
        Delta {
            connects: 1,
            ..Delta::default()
        },
    );
    // A UDP socket may connect again, elsewhere: it holds one remote port.
    if st.remote_port != 0 {
        add(
            &key(netns, proto, family, st.remote_port, role::REMOTE),
            Delta {
                live: -1,
                ..Delta::default()
            },
        );
    }
    add(
        &key(netns, proto, family, port, role::REMOTE),
        Delta {
            connects: 1,
            live: 1,
            ..Delta::default()
        },
    );
    st.remote_port = port;
}

/// Settles what was pending on a tracked socket about to connect, and
/// counts a TCP connect from a socket bound to port 0 by its command.
#[inline(always)]
fn settle_before_connect(ctx: &SockAddrContext, st: &mut SockState, bound_port: u16, has_addr: bool) {
    // bind(addr, 0) with IP_BIND_ADDRESS_NO_PORT succeeds without taking a
    // port or running post_bind, and leaves the address set.
    if st.pending == pending::BIND && bound_port == 0 && st.pending_port == 0 && has_addr {
        st.pending = pending::NONE;
    }
    if st.pending != pending::NONE {
        settle(st, netns(ctx), cookie(ctx), bound_port);
    }
    if st.flags & BOUND_TO_ZERO != 0 {
        st.flags &= !BOUND_TO_ZERO;
        count_bind_before_connect();
    }
}

#[inline(always)]
fn count_bind_before_connect() {
    let comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16]);
    if let Some(p) = BIND_BEFORE_CONNECT.get_ptr_mut(comm) {
        // SAFETY: a map value pointer, 8-byte aligned.
        unsafe { xadd(p, 1) };
    } else if BIND_BEFORE_CONNECT.insert(comm, 1, 0).is_err() {
        count_health(portmon_common::slot::BIND_BEFORE_CONNECT_OVERFLOW);
    }
}
