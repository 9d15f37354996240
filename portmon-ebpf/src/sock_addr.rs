//! cgroup `sock_addr` hooks: bind() and connect() as they are asked for,
//! before the kernel decides. A bind, and a UDP connect that makes the
//! kernel pick a port, take the socket's slot, recording who asked, and
//! open the operation there; later hooks settle it. A TCP connect takes no
//! slot: its failure shows in the state tracepoint, and nobody reads a
//! client socket's slot.

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use portmon_common::{family, kind, pending, proto, sock_flag};

use crate::{
    count::{count, count_bind_before_connect},
    netns::Netns,
    sockets::{find, find_or_claim, settle, Owner, Tracked},
    ALLOW,
};

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    if !crate::hooks_only() {
        on_bind(&ctx, family::INET);
    }
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    if !crate::hooks_only() {
        on_bind(&ctx, family::INET6);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    if !crate::hooks_only() {
        on_connect(&ctx, family::INET);
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    if !crate::hooks_only() {
        on_connect(&ctx, family::INET6);
    }
    ALLOW
}

/// What a bind() or connect() asks for.
struct Request {
    sk: *mut bpf_sock,
    proto: u8,
    /// Port asked for, host order.
    port: u16,
}

/// The socket, its protocol and the port asked for, if portmon watches the
/// socket's transport.
#[inline(always)]
fn request(ctx: &SockAddrContext) -> Option<Request> {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = match sa.protocol {
        p if p == u32::from(proto::TCP) => proto::TCP,
        p if p == u32::from(proto::UDP) => proto::UDP,
        _ => return None,
    };
    Some(Request {
        // SAFETY: the union's only member the kernel sets for this context,
        // a full socket (BPF_CGROUP_RUN_SA_PROG, include/linux/bpf-cgroup.h).
        sk: unsafe { sa.__bindgen_anon_1.sk },
        proto,
        // user_port holds the port as stored in the sockaddr: network order.
        port: u16::from_be(sa.user_port as u16),
    })
}

/// Writes the address asked for into `to`, as bytes in network order.
/// Word by word: building the array would zero its last twelve bytes for
/// an IPv4 address with a call to the BPF object's `memset`.
#[inline(always)]
fn write_requested_addr(ctx: &SockAddrContext, family: u8, to: &mut [u8; 16]) {
    // SAFETY: as in `request`.
    let sa = unsafe { &*ctx.sock_addr };
    // Each word is in network order already: keep the bytes as they lie.
    let words = if family == family::INET {
        [sa.user_ip4, 0, 0, 0]
    } else {
        sa.user_ip6
    };
    let to = (&raw mut *to).cast::<u32>();
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: 16 writable bytes of a map value at a 4-byte aligned
        // offset (`SockSlot::pending_addr`); `i` is below 4.
        unsafe { to.add(i).write_unaligned(word) };
    }
}

#[inline(always)]
fn netns(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper accepts a sock_addr context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The namespace `cookie`, the context's socket's.
#[inline(always)]
fn ns(ctx: &SockAddrContext, cookie: u64) -> Netns {
    Netns::of_sock_addr(cookie, ctx.as_ptr() as u64)
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper accepts a sock_addr context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, family: u8) {
    let Some(req) = request(ctx) else { return };
    // SAFETY: a valid socket pointer for this run.
    let bound_port = unsafe { (*req.sk).src_port } as u16;
    // A socket that has a port fails bind() with EINVAL (`__inet_bind`
    // checks inet_num): no outcome will follow to wait for.
    if bound_port != 0 {
        return;
    }
    let owner = if req.port == 0 {
        Owner::Later
    } else {
        Owner::Record
    };
    let Some(mut tracked) = find_or_claim(cookie(ctx), netns(ctx), family, req.proto, owner) else {
        return;
    };
    if tracked.slot.pending != pending::NONE {
        settle(&mut tracked, ns(ctx, 0), bound_port);
    }
    tracked.slot.pending = pending::BIND;
    tracked.slot.pending_port = req.port;
    write_requested_addr(ctx, family, &mut tracked.slot.pending_addr);
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u8) {
    let Some(req) = request(ctx) else { return };
    // SAFETY: a valid socket pointer for this run.
    let (bound_port, has_addr) = unsafe {
        let sk = &*req.sk;
        (
            sk.src_port as u16,
            if family == family::INET {
                sk.src_ip4 != 0
            } else {
                sk.src_ip6 != [0; 4]
            },
        )
    };
    // UDP's auto-bind inside connect() (`inet_dgram_connect`) may fail with
    // EAGAIN, and no hook runs after it: the slot keeps the operation open
    // until the socket's next event.
    let udp_autobind = req.proto == proto::UDP && bound_port == 0;
    let tracked = if udp_autobind {
        find_or_claim(cookie(ctx), netns(ctx), family, req.proto, Owner::Later)
    } else {
        find(cookie(ctx))
    };
    let Some(mut tracked) = tracked else {
        if req.proto == proto::UDP && !udp_autobind {
            count(
                ns(ctx, netns(ctx)),
                proto::UDP,
                family,
                kind::CONNECTS_TO,
                req.port,
            );
        }
        return;
    };
    settle_before_connect(&mut tracked, bound_port, has_addr, ns(ctx, 0));
    if req.proto == proto::TCP {
        // Counted by the state tracepoint once established.
        return;
    }
    let st = &mut *tracked.slot;
    if udp_autobind {
        st.pending = pending::UDP_CONNECT;
        st.pending_port = req.port;
        write_requested_addr(ctx, family, &mut st.pending_addr);
        return;
    }
    count(ns(ctx, st.netns), proto::UDP, family, kind::CONNECTS_TO, req.port);
    // A UDP socket may connect again, elsewhere: it holds one remote port.
    st.remote_port = req.port;
    st.flags |= sock_flag::CONNECTED;
}

/// Settles what was pending on a socket about to connect, and counts a
/// connect from a socket bound to port 0 by its command.
#[inline(always)]
fn settle_before_connect(tracked: &mut Tracked, bound_port: u16, has_addr: bool, ns: Netns) {
    let st = &mut *tracked.slot;
    // bind(addr, 0) with IP_BIND_ADDRESS_NO_PORT succeeds without taking a
    // port or running post_bind, and leaves the address set.
    if st.pending == pending::BIND && bound_port == 0 && st.pending_port == 0 && has_addr {
        st.pending = pending::NONE;
    }
    if st.pending != pending::NONE {
        settle(tracked, ns, bound_port);
    }
    let st = &*tracked.slot;
    if st.proto == proto::TCP && st.flags & sock_flag::BOUND_TO_ZERO != 0 && bound_port != 0 {
        count_bind_before_connect();
    }
}
