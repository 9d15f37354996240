//! How long each TCP connect spends finding a local port: a leading sign
//! of exhaustion, since `__inet_hash_connect` (net/ipv4/inet_hashtables.c)
//! walks more of the range the fuller it is, long before a connect fails.
//!
//! Without kprobes or fentry the search is bracketed by two hooks of the
//! same connect() call: the state tracepoint's CLOSE → SYN_SENT, which
//! `tcp_v4_connect` / `tcp_v6_connect` take just before `inet_hash_connect`,
//! and the `sock_ops` callback `BPF_SOCK_OPS_TCP_CONNECT_CB`, early in
//! `tcp_connect()` (net/ipv4/tcp_output.c), after the port is chosen. What
//! lies between besides the search is small and does not grow with the
//! pool: the route lookup redone for the new port (`ip_route_newports`)
//! and the initial sequence number.
//!
//! The start is kept by socket cookie, which both sides can name: the
//! `connect4`/`connect6` programs asked for it just before (sock_addr.rs),
//! so the tracepoint reads it from the socket, and `sock_ops` asks the
//! helper. An LRU hash, because a connect may never reach the callback: a
//! search that finds no port (EADDRNOTAVAIL) is timed and deleted at its
//! SYN_SENT → CLOSE; a route that fails after the search leaves an entry
//! the map drops when it needs the room. A connect TCP Fast Open defers
//! (`TCP_FASTOPEN_CONNECT`, `tcp_fastopen_defer_connect`) reaches
//! `tcp_connect()` only at its first send, and its time includes the wait.
//!
//! Off unless asked for (`connect-search`): a hash insert and delete per
//! connect, and a `sock_ops` program the kernel calls several times per
//! connection, cost more than the rest of portmon's per-connect work
//! (docs/performance.md).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{map, sock_ops},
    maps::{Array, LruHashMap, PerCpuHashMap},
    programs::SockOpsContext,
    EbpfContext,
};
use portmon_common::{capacity, SearchHistogram};

use crate::{counter_maps::xadd, layout};

#[map]
static CONNECT_SEARCH_STARTS: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(capacity::CONNECT_SEARCH_STARTS, 0);

#[map]
static CONNECT_SEARCH: PerCpuHashMap<u64, SearchHistogram> =
    PerCpuHashMap::with_max_entries(capacity::CONNECT_SEARCH_NAMESPACES, 0);

#[map]
static CONNECT_SEARCH_OVERFLOW: Array<u64> = Array::with_max_entries(1, 0);

/// Set by the loader when the search is timed; read-only data the kernel
/// freezes, so the verifier prunes the tracepoint's extra work otherwise.
#[unsafe(no_mangle)]
static PORTMON_CONNECT_SEARCH: u8 = 0;

/// Whether connects' port searches are timed.
#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of a static; volatile so the compiler keeps it
    // for the loader to set.
    unsafe { core::ptr::read_volatile(&raw const PORTMON_CONNECT_SEARCH) != 0 }
}

/// `sock_ops` returns 1 whatever the callback: it changes nothing.
const OK: u32 = 1;

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if crate::hooks_only() {
        return OK;
    }
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        on_tcp_connect(&ctx);
    }
    OK
}

/// The socket entered SYN_SENT in connect(): its port search starts now.
#[inline(always)]
pub fn on_syn_sent(sk: u64) {
    let cookie = layout::cookie(sk);
    // A socket without a cookie met no connect program: its callback's
    // cookie would not match.
    if cookie == 0 {
        return;
    }
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // An LRU map makes room by itself; a failed update only loses a sample.
    let _ = CONNECT_SEARCH_STARTS.insert(cookie, now, 0);
}

/// A connect went from SYN_SENT back to CLOSE before its callback. When
/// the search found no port (`no_port`), its whole walk of the range is
/// the longest search there is, and is counted.
#[inline(always)]
pub fn on_connect_ended(sk: u64, no_port: bool) {
    let cookie = layout::cookie(sk);
    if cookie == 0 {
        return;
    }
    // SAFETY: a map value pointer, valid for this run.
    let Some(start) = CONNECT_SEARCH_STARTS.get_ptr(cookie).map(|p| unsafe { *p }) else {
        return;
    };
    let _ = CONNECT_SEARCH_STARTS.remove(cookie);
    if no_port {
        // SAFETY: the helper takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        record(layout::netns(sk), now.saturating_sub(start));
    }
}

/// `tcp_connect()` runs the callback once the port is chosen and the
/// route is set, before the SYN is built.
#[inline(always)]
fn on_tcp_connect(ctx: &SockOpsContext) {
    // SAFETY: the helper accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a map value pointer, valid for this run.
    let Some(start) = CONNECT_SEARCH_STARTS.get_ptr(cookie).map(|p| unsafe { *p }) else {
        return;
    };
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = CONNECT_SEARCH_STARTS.remove(cookie);
    // SAFETY: the helper accepts a sock_ops context (Linux 5.15).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    record(netns, now.saturating_sub(start));
}

/// Adds one search of `ns` nanoseconds to the namespace's histogram.
#[inline(always)]
fn record(netns: u64, ns: u64) {
    let histogram = match CONNECT_SEARCH.get_ptr_mut(netns) {
        Some(h) => h,
        None => {
            // Another CPU may insert first: its entry is this CPU's too.
            let _ = CONNECT_SEARCH.insert(netns, SearchHistogram::ZERO, u64::from(BPF_NOEXIST));
            let Some(h) = CONNECT_SEARCH.get_ptr_mut(netns) else {
                if let Some(n) = CONNECT_SEARCH_OVERFLOW.get_ptr_mut(0) {
                    // SAFETY: an array map value pointer, 8-byte aligned.
                    unsafe { xadd(n, 1) };
                }
                return;
            };
            h
        }
    };
    let bucket = SearchHistogram::bucket(ns);
    // SAFETY: this CPU's value, valid for this run; `bucket` is below
    // SEARCH_BUCKETS. Atomic because a program may be preempted by
    // another on the same CPU (both run in connect()'s process context).
    unsafe {
        xadd((&raw mut (*histogram).buckets).cast::<u64>().add(bucket), 1);
        xadd(&raw mut (*histogram).sum_ns, ns);
    }
}
