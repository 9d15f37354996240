//! The raw tracepoint `inet_sock_set_state`: TCP's life as the state
//! machine moves. A connect that came up, a socket that listens, a
//! connection that ended, and a connect that ran out of local ports (no
//! hook runs after connect() fails); with `connect-search`, also where a
//! connect starts looking for a port (connect_search.rs). A raw tracepoint costs a fraction of a
//! perf-event one, and of `sock_ops`, which the kernel calls ten times per
//! connection: the kernel builds no record, and the program filters on the
//! two states in its arguments before it reads anything.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use portmon_common::{assigned, errno, family, kind, op, proto, sock_flag, tcp_state};

use crate::{
    connect_search,
    count::{count, count_assigned},
    layout::{self, Head},
    netns::Netns,
    sockets::{current_failure, find, free, record_owner, send_failure},
};

// The tracepoint passes states as `int`s, read here as whole registers.
const TCP_ESTABLISHED: u64 = tcp_state::ESTABLISHED as u64;
const TCP_SYN_SENT: u64 = tcp_state::SYN_SENT as u64;
const TCP_CLOSE: u64 = tcp_state::CLOSE as u64;
const TCP_LISTEN: u64 = tcp_state::LISTEN as u64;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let (old, new): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    let sk: u64 = ctx.arg(0);
    match (old, new) {
        (TCP_SYN_SENT, TCP_ESTABLISHED) if is_tcp(sk) => on_established(sk),
        // tcp_v4_connect/tcp_v6_connect, just before inet_hash_connect().
        (TCP_CLOSE, TCP_SYN_SENT) if connect_search::enabled() && is_tcp(sk) => {
            connect_search::on_syn_sent(sk);
        }
        (TCP_SYN_SENT, TCP_CLOSE) if is_tcp(sk) => {
            let no_port = on_connect_failed(sk);
            on_connect_closed(sk);
            if connect_search::enabled() {
                connect_search::on_connect_ended(sk, no_port);
            }
        }
        (TCP_CLOSE, TCP_LISTEN) if is_tcp(sk) => on_listen(sk),
        (TCP_LISTEN, TCP_CLOSE) => on_listen_stop(sk),
        // Every state after ESTABLISHED; passive sockets (from SYN_RECV)
        // have no slot.
        (_, TCP_CLOSE) => on_close(sk),
        _ => {}
    }
    0
}

/// Whether the socket is TCP's. MPTCP's sockets move through the same
/// states (`mptcp_set_state`, net/mptcp/protocol.c, calls
/// `inet_sk_state_store`), as SCTP's do (`inet_sk_set_state`), without a
/// port of their own: a failed MPTCP connect would read as a TCP connect
/// that found no port, and a good one would count twice beside its TCP
/// subflow. The sockets that close or stop listening need no check: only
/// TCP and UDP sockets take a slot.
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    layout::protocol(sk) == u16::from(proto::TCP)
}

/// The SYN-ACK arrived (`tcp_finish_connect`, net/ipv4/tcp_input.c): the
/// connect succeeded, from the port bound before or one the kernel picked
/// (`__inet_hash_connect`). Only a socket bound by bind() has a slot.
#[inline(always)]
fn on_established(sk: u64) {
    let Some(head) = layout::head(sk) else { return };
    let family = head.family as u8;
    let Some(tracked) = find(layout::cookie(sk)) else {
        let ns = Netns::new(layout::netns(sk), sk);
        count_assigned(ns, proto::TCP, family, assigned::CONNECT);
        count(ns, proto::TCP, family, kind::CONNECTS_TO, head.dport);
        return;
    };
    let st = tracked.slot;
    let ns = Netns::new(st.netns, sk);
    // bind(addr, 0) with IP_BIND_ADDRESS_NO_PORT left the port to connect.
    if st.flags & sock_flag::BOUND == 0 {
        count_assigned(ns, proto::TCP, family, assigned::CONNECT);
    }
    count(ns, proto::TCP, family, kind::CONNECTS_TO, head.dport);
    st.local_port = head.num;
    st.remote_port = head.dport;
    st.flags |= sock_flag::CONNECTED;
}

/// `listen()` succeeded (`__inet_listen_sk`, net/ipv4/af_inet.c), with
/// the port bound before or picked now.
#[inline(always)]
fn on_listen(sk: u64) {
    let Some(head) = layout::head(sk) else { return };
    let family = head.family as u8;
    // A socket that listens without bind() has no cookie yet, so no slot:
    // its listen is counted, its owner unknown.
    let Some(tracked) = find(layout::cookie(sk)) else {
        let ns = Netns::new(layout::netns(sk), sk);
        return count(ns, proto::TCP, family, kind::LISTENS, head.num);
    };
    let st = tracked.slot;
    // A socket bound to port 0 was claimed without an owner: the process
    // that listens on it is.
    if st.pid == 0 {
        record_owner(st);
    }
    count(
        Netns::new(st.netns, sk),
        proto::TCP,
        family,
        kind::LISTENS,
        head.num,
    );
    st.local_port = head.num;
    st.flags |= sock_flag::LISTENING;
}

/// A listener stopped without being closed (shutdown()); one being closed
/// gave its slot back at release, just before.
#[inline(always)]
fn on_listen_stop(sk: u64) {
    let Some(tracked) = find(layout::cookie(sk)) else {
        return;
    };
    let st = tracked.slot;
    st.flags &= !sock_flag::LISTENING;
    // Without SOCK_BINDPORT_LOCK the port goes with the listener
    // (`tcp_set_state`, net/ipv4/tcp.c).
    if st.flags & sock_flag::BOUND_TO_ZERO != 0 || st.flags & sock_flag::BOUND == 0 {
        st.local_port = 0;
    }
}

/// A connection ended: the socket reached CLOSE from a state after
/// ESTABLISHED (`tcp_set_state` calls the tracepoint before unhashing). The
/// process has closed it or soon will; portmon stops following it.
#[inline(always)]
fn on_close(sk: u64) {
    if let Some(tracked) = find(layout::cookie(sk)) {
        free(tracked);
    }
}

/// A connect ended before it came up. A socket closed while connecting
/// (`tcp_close` from SYN_SENT) gives its slot back now; one whose connect
/// failed stays open, and keeps its slot until it is released.
#[inline(always)]
fn on_connect_closed(sk: u64) {
    if let Some(tracked) = find(layout::cookie(sk)) {
        if tracked.slot.released != 0 {
            free(tracked);
        }
    }
}

/// tcp_v4_connect/tcp_v6_connect (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c)
/// enter SYN_SENT before inet_hash_connect() and fall back to CLOSE when it
/// fails: __inet_hash_connect (net/ipv4/inet_hashtables.c) found no free
/// port, EADDRNOTAVAIL. A connect that got its port and was then refused
/// also goes SYN_SENT → CLOSE, and by the time the tracepoint fires
/// (`inet_sk_state_store`, at the end of `tcp_set_state`) `inet_put_port`
/// has cleared its port too; what tells them apart is the established-hash
/// insert, which sets skc_hash (`inet_ehash_insert`) on every socket that
/// got a port. A socket that never had one keeps the zero that
/// `sk_prot_clear_nulls` gave it. Either way the socket stays open, and
/// keeps its slot until it is released. Says whether the search found no
/// port.
#[inline(always)]
fn on_connect_failed(sk: u64) -> bool {
    let Some(Head {
        hash,
        dport,
        daddr,
        family: sk_family,
        ..
    }) = layout::head(sk)
    else {
        return false;
    };
    if hash != 0 {
        return false;
    }
    let mut event = current_failure(errno::EADDRNOTAVAIL, op::CONNECT, proto::TCP, sk_family as u8);
    event.netns = layout::netns(sk);
    event.socket_cookie = layout::cookie(sk);
    event.port = dport;
    if sk_family == u16::from(family::INET) {
        let [a, b, c, d] = daddr;
        (event.addr[0], event.addr[1], event.addr[2], event.addr[3]) = (a, b, c, d);
    } else {
        event.addr = layout::v6_daddr(sk);
    }
    send_failure(&event);
    true
}
