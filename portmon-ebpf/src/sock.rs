//! cgroup `sock` hooks: a bind that succeeded, and a socket being closed.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::SockContext,
    EbpfContext,
};
use portmon_common::{assigned, kind, pending, proto, sock_flag, tcp_state};

use crate::{
    count::{count, count_assigned},
    layout,
    netns::Netns,
    sockets::{find, free, settle},
    ALLOW,
};

// `struct bpf_sock`'s `state` is a `__u32`.
const TCP_SYN_SENT: u32 = tcp_state::SYN_SENT as u32;
const TCP_CLOSE: u32 = tcp_state::CLOSE as u32;
const TCP_LISTEN: u32 = tcp_state::LISTEN as u32;

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    if !crate::hooks_only() {
        on_post_bind(&ctx);
    }
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    if !crate::hooks_only() {
        on_post_bind(&ctx);
    }
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    if !crate::hooks_only() {
        on_release(&ctx);
    }
    ALLOW
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
    // SAFETY: the helper accepts a cgroup sock context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(tracked) = find(cookie) else {
        // Not followed (its slots were taken): counted all the same.
        // SAFETY: as above.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        return count(
            Netns::new(netns, ctx.sock as u64),
            proto,
            family,
            kind::BINDS,
            port,
        );
    };
    let st = tracked.slot;
    let ns = Netns::new(st.netns, ctx.sock as u64);
    let asked = if st.pending == pending::BIND {
        st.pending_port
    } else {
        port
    };
    if asked == 0 {
        count_assigned(ns, proto, family, assigned::BIND);
        st.flags |= sock_flag::BOUND_TO_ZERO;
    } else {
        count(ns, proto, family, kind::BINDS, port);
    }
    st.pending = pending::NONE;
    st.local_port = port;
    st.flags |= sock_flag::BOUND;
}

/// The release hook fires for every socket closed, accepted ones and ones
/// older than portmon included (`inet_release`, net/ipv4/af_inet.c), before
/// the protocol's close and without the socket's lock. A connected or
/// connecting TCP socket then still has its close transition to come
/// (after a FIN exchange, perhaps much later), where the state tracepoint
/// gives its slot back; the others end here.
///
/// A UDP socket that holds a port no bind() or connect() gave it got it
/// from `inet_autobind` inside sendto() or sendmsg() (`inet_send_prepare`,
/// net/ipv4/af_inet.c): counted here, once per socket, where a sendmsg hook
/// would run for every datagram. A socket bound before portmon started, or
/// one whose slot could not be taken (counted), is counted so as well.
#[inline(always)]
fn on_release(ctx: &SockContext) {
    // SAFETY: the kernel passes a valid full socket to cgroup sock programs.
    let (protocol, state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    let udp = protocol == u32::from(proto::UDP);
    if protocol == u32::from(proto::TCP) && !matches!(state, TCP_CLOSE | TCP_LISTEN | TCP_SYN_SENT) {
        return;
    }
    // The cookie as the socket holds it: a socket without one was never
    // followed, and asking the helper would make one.
    let sk = ctx.sock as u64;
    let tracked = find(layout::cookie(sk));
    if !udp && tracked.is_none() {
        return;
    }
    // Where its port is needed, it is read from the socket itself:
    // `sock_release` may not read `src_port` from its context
    // (`__sock_filter_check_attach_type`, net/core/filter.c).
    if let Some(tracked) = tracked {
        // The softirq that completes a connect may write the slot now
        // (`tcp_finish_connect`): the slot goes back at the close transition
        // that follows (`tcp_close` sets CLOSE, or the connection ends).
        if state == TCP_SYN_SENT && !udp {
            tracked.slot.released = 1;
            // A connect refused in between reached CLOSE before the mark:
            // nobody else will give the slot back.
            // SAFETY: as above; volatile, so that the context reads the
            // socket's state anew.
            if unsafe { core::ptr::read_volatile(&raw const (*ctx.sock).state) } == TCP_CLOSE {
                free(tracked);
            }
            return;
        }
        // Nothing left to settle or count: the usual end of a bound socket,
        // which needs no read of the socket itself.
        let st = &*tracked.slot;
        if st.pending == pending::NONE && (!udp || st.flags & (sock_flag::BOUND | sock_flag::AUTOBOUND) != 0)
        {
            return free(tracked);
        }
        let mut tracked = tracked;
        let Some(head) = layout::head(sk) else {
            // A bind still pending failed: post_bind clears it on success.
            // Reported without the port the socket holds, which only a UDP
            // connect's outcome needs.
            if tracked.slot.pending == pending::BIND {
                settle(&mut tracked, Netns::new(0, sk), 0);
            }
            return free(tracked);
        };
        if tracked.slot.pending != pending::NONE {
            settle(&mut tracked, Netns::new(0, sk), head.num);
        }
        let st = &*tracked.slot;
        let counted = st.flags & (sock_flag::BOUND | sock_flag::AUTOBOUND) != 0;
        let ns = Netns::new(st.netns, sk);
        free(tracked);
        if udp && head.num != 0 && !counted {
            count_assigned(ns, proto::UDP, head.family as u8, assigned::AUTOBIND);
        }
        return;
    }
    let Some(head) = layout::head(sk) else { return };
    if head.num != 0 {
        // SAFETY: the helper accepts a cgroup sock context.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        count_assigned(
            Netns::new(netns, sk),
            proto::UDP,
            head.family as u8,
            assigned::AUTOBIND,
        );
    }
}
