//! The raw tracepoint `inet_sock_set_state`: the one place a TCP connect
//! that ran out of local ports shows, since no hook runs after connect()
//! fails. A raw tracepoint costs a fraction of a perf-event one: the kernel
//! builds no record, and the program reads the two states it filters on
//! straight from the arguments.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext};
use portmon_common::{errno, family, op, proto};

use crate::sock_state::{current_failure, send_failure};

const TCP_SYN_SENT: u64 = 2;
const TCP_CLOSE: u64 = 7;

// Offsets in `struct sock_common` (include/net/sock.h), unchanged since
// Linux 2.6.38: skc_daddr at 0, skc_hash at 8, skc_dport at 12, skc_family at 16.
const SKC_DADDR: usize = 0;
const SKC_HASH: usize = 8;
const SKC_DPORT: usize = 12;
const SKC_FAMILY: usize = 16;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let (old, new): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    if old == TCP_SYN_SENT && new == TCP_CLOSE {
        let _ = on_connect_failed(ctx.arg::<u64>(0) as *const u8);
    }
    0
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
/// `sk_prot_clear_nulls` gave it. Only TCP has SYN_SENT. The namespace is
/// not reachable from here: user space finds it through the thread.
#[inline(always)]
fn on_connect_failed(sk: *const u8) -> Result<(), i32> {
    // SAFETY: reads of the socket the tracepoint passed, checked by the helper.
    let (hash, dport, sk_family) = unsafe {
        (
            bpf_probe_read_kernel(sk.add(SKC_HASH).cast::<u32>())?,
            bpf_probe_read_kernel(sk.add(SKC_DPORT).cast::<u16>())?,
            bpf_probe_read_kernel(sk.add(SKC_FAMILY).cast::<u16>())?,
        )
    };
    if hash != 0 {
        return Ok(());
    }
    let mut event = current_failure(errno::EADDRNOTAVAIL, op::CONNECT, proto::TCP, sk_family as u8);
    event.port = u16::from_be(dport);
    if sk_family == u16::from(family::INET) {
        // SAFETY: as above.
        let daddr = unsafe { bpf_probe_read_kernel(sk.add(SKC_DADDR).cast::<[u8; 4]>())? };
        let [a, b, c, d] = daddr;
        (event.addr[0], event.addr[1], event.addr[2], event.addr[3]) = (a, b, c, d);
    }
    send_failure(&event);
    Ok(())
}
