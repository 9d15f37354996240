//! cgroup `sock_addr` hooks: bind() and connect() as they are asked for,
//! before the kernel decides. They open the operation in the socket's
//! record; later hooks close it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_getsockopt},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use portmon_common::{family, pending, proto, ConnectAttempt};

use crate::{
    maps::CONNECTING,
    record::{connected, lookup, new_record, own, settle, store},
    ALLOW,
};

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, family::INET);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, family::INET6);
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, family::INET);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, family::INET6);
    ALLOW
}

/// What a sock_addr hook knows: the socket and the address asked for.
struct Request {
    cookie: u64,
    netns: u64,
    proto: u8,
    /// Local port the socket already has (host order), 0 if none.
    bound_port: u16,
    /// The address and port asked for (network order bytes, host order port).
    addr: [u8; 16],
    port: u16,
}

#[inline(always)]
fn request(ctx: &SockAddrContext, family: u8) -> Option<Request> {
    // SAFETY: the kernel hands every sock_addr program a valid context, and
    // its `sk` is a full socket (BPF_CGROUP_RUN_SA_PROG in
    // include/linux/bpf-cgroup.h).
    let sa = unsafe { &*ctx.sock_addr };
    let proto = match sa.protocol {
        p if p == u32::from(proto::TCP) => proto::TCP,
        p if p == u32::from(proto::UDP) => proto::UDP,
        _ => return None,
    };
    // SAFETY: as above.
    let sk = unsafe { &*sa.__bindgen_anon_1.sk };
    let addr = if family == family::INET {
        let mut a = [0u8; 16];
        let [b0, b1, b2, b3] = sa.user_ip4.to_ne_bytes();
        a[0] = b0;
        a[1] = b1;
        a[2] = b2;
        a[3] = b3;
        a
    } else {
        ip6_bytes(sa.user_ip6)
    };
    Some(Request {
        // SAFETY: both helpers accept a sock_addr context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        // SAFETY: as above.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        proto,
        bound_port: sk.src_port as u16,
        addr,
        // user_port holds the port as stored in sockaddr, network order.
        port: u16::from_be(sa.user_port as u16),
    })
}

#[inline(always)]
fn ip6_bytes(words: [u32; 4]) -> [u8; 16] {
    // Each word is in network order already; keep the bytes as they lie.
    let [w0, w1, w2, w3] = words;
    let (a, b, c, d) = (w0.to_ne_bytes(), w1.to_ne_bytes(), w2.to_ne_bytes(), w3.to_ne_bytes());
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]
}

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, family: u8) {
    let Some(req) = request(ctx, family) else { return };
    let mut rec = lookup(req.cookie).unwrap_or_else(|| new_record(req.netns, family, req.proto));
    settle(&mut rec, req.cookie, req.bound_port);
    // A socket that has a port fails bind() with EINVAL (`__inet_bind`
    // checks inet_num), and bind(addr, 0) with IP_BIND_ADDRESS_NO_PORT
    // succeeds without taking a port or running post_bind: in neither case
    // will an outcome follow to wait for.
    if req.bound_port == 0 && !(req.port == 0 && bind_address_no_port(ctx)) {
        own(&mut rec);
        rec.pending = pending::BIND;
        rec.pending_port = req.port;
        rec.pending_addr = req.addr;
    }
    store(req.cookie, &rec);
}

/// Whether the socket defers its port to connect() (IP_BIND_ADDRESS_NO_PORT).
/// bpf_getsockopt knows the option for IPv4 sockets (`sol_ip_sockopt`,
/// net/core/filter.c); where it fails the bind is watched as usual.
#[inline(always)]
fn bind_address_no_port(ctx: &SockAddrContext) -> bool {
    const SOL_IP: i32 = 0;
    const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
    let mut value: i32 = 0;
    // SAFETY: `value` is a valid 4-byte buffer for the helper to fill.
    let rc = unsafe {
        bpf_getsockopt(
            ctx.as_ptr(),
            SOL_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&raw mut value).cast(),
            core::mem::size_of::<i32>() as i32,
        )
    };
    rc == 0 && value != 0
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u8) {
    let Some(req) = request(ctx, family) else { return };
    let mut rec = lookup(req.cookie).unwrap_or_else(|| new_record(req.netns, family, req.proto));
    settle(&mut rec, req.cookie, req.bound_port);
    own(&mut rec);
    rec.pending_addr = req.addr;
    rec.pending_port = req.port;
    if req.proto == proto::TCP {
        // The port is picked later, inside the syscall; sock_ops and the
        // state tracepoint take it from here, the latter by thread.
        let attempt = ConnectAttempt {
            netns: req.netns,
            socket_cookie: req.cookie,
            addr: req.addr,
            port: req.port,
            family,
            _pad: [0; 5],
        };
        let _ = CONNECTING.insert(&bpf_get_current_pid_tgid(), &attempt, 0);
    } else if req.bound_port != 0 {
        connected(&mut rec, req.bound_port, req.port);
    } else {
        rec.pending = pending::UDP_CONNECT;
    }
    store(req.cookie, &rec);
}
