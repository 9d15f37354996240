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
use portmon_common::{pending, proto, role};

use crate::{
    maps::{Field, SOCKETS},
    record::{count, hold_local, lookup, new_record, release, settle, store},
    ALLOW,
};

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    on_post_bind(&ctx);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    on_post_bind(&ctx);
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    on_release(&ctx);
    ALLOW
}

#[inline(always)]
fn transport(protocol: u32) -> Option<u8> {
    match protocol {
        p if p == u32::from(proto::TCP) => Some(proto::TCP),
        p if p == u32::from(proto::UDP) => Some(proto::UDP),
        _ => None,
    }
}

#[inline(always)]
fn on_post_bind(ctx: &SockContext) {
    // SAFETY: the kernel passes a valid full socket to cgroup sock programs.
    let sk = unsafe { &*ctx.sock };
    let Some(proto) = transport(sk.protocol) else { return };
    // Runs only once get_port() succeeded, with inet_num set to the port
    // actually bound, so bind(0) shows the port the kernel chose
    // (`__inet_bind`, net/ipv4/af_inet.c; `__inet6_bind`, net/ipv6/af_inet6.c).
    let port = sk.src_port as u16;
    // SAFETY: both helpers accept a cgroup sock context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut rec = match lookup(cookie) {
        Some(rec) => rec,
        // SAFETY: as above.
        None => new_record(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }, sk.family as u8, proto),
    };
    rec.pending = pending::NONE;
    count(&rec, port, role::LOCAL, Field::Binds);
    hold_local(&mut rec, port);
    store(cookie, &rec);
}

/// Offset of `skc_num` (the local port, host order) in `struct sock_common`
/// (include/net/sock.h): after skc_addrpair (8 bytes) and skc_hash (4), and
/// before it skc_dport (2). These first 16 bytes have kept their layout since
/// Linux 2.6.38, because socket lookups compare them as words.
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

#[inline(always)]
fn on_release(ctx: &SockContext) {
    // SAFETY: the helper accepts a cgroup sock context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Accepted sockets and sockets older than portmon have no record: the
    // release hook fires for them too (`inet_release`, net/ipv4/af_inet.c),
    // and there is nothing of theirs to give back.
    let Some(mut rec) = lookup(cookie) else { return };
    settle(&mut rec, cookie, local_port(ctx));
    release(&rec);
    let _ = SOCKETS.remove(&cookie);
}
