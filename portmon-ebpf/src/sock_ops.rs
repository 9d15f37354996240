//! TCP events from `sock_ops`: a connect that got its port, a connection
//! that is up, a socket that listens.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext,
};
use portmon_common::{proto, role};

use crate::{
    maps::{Field, SOCKETS},
    record::{count, hold_local, hold_remote, lookup, new_record, store},
};

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
        _ => {}
    }
    // The return value only matters to callbacks that ask for a reply.
    1
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper accepts a sock_ops context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// `remote_port` holds the 16-bit network-order port in its upper half.
#[inline(always)]
fn remote_port(ctx: &SockOpsContext) -> u16 {
    u32::from_be(ctx.remote_port()) as u16
}

/// The SYN is about to go out: `tcp_connect()` (net/ipv4/tcp_output.c) runs
/// this after `inet_hash_connect()` picked the local port.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let Some(rec) = SOCKETS.get_ptr_mut(&cookie) else { return };
    // SAFETY: a map value pointer, valid for this run; the socket lock the
    // kernel holds here keeps other hooks of this socket out.
    let rec = unsafe { &mut *rec };
    hold_local(rec, ctx.local_port() as u16);
    hold_remote(rec, remote_port(ctx));
}

/// The SYN-ACK arrived (`tcp_finish_connect`, net/ipv4/tcp_input.c): the
/// connect succeeded. Runs in softirq: the owner is the record's, not the
/// current task.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    let Some(rec) = lookup(cookie(ctx)) else { return };
    count(&rec, ctx.local_port() as u16, role::LOCAL, Field::Connects);
    count(&rec, remote_port(ctx), role::REMOTE, Field::Connects);
}

/// `listen()` succeeded (`__inet_listen_sk`, net/ipv4/af_inet.c), in the
/// caller's context; a socket listening without bind() got its port here.
#[inline(always)]
fn on_listen(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let mut rec = match lookup(cookie) {
        Some(rec) => rec,
        // SAFETY: the helper accepts a sock_ops context.
        None => new_record(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }, ctx.family() as u8, proto::TCP),
    };
    let port = ctx.local_port() as u16;
    count(&rec, port, role::LOCAL, Field::Listens);
    hold_local(&mut rec, port);
    store(cookie, &rec);
}
