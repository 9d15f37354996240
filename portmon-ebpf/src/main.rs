//! portmon's kernel programs.
//!
//! They count in maps and return at once; only failures, which are rare,
//! travel to user space, through a ring buffer. Every cgroup program allows
//! the operation on every path: portmon watches, it never decides.
//!
//! The hot path touches arrays only, with hash lookups when a CPU first
//! meets a port table: a hash lookup, above all one whose bucket is out of
//! the cache, costs more than everything else a program does (the figures
//! are in docs/performance.md).
#![no_std]
#![no_main]
// 64-bit atomic add and compare-and-exchange on map values (see counter_maps::xadd).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only way to BPF atomic instructions"
)]

/// A plain read of a static the loader sets; volatile so the compiler
/// keeps it.
macro_rules! loader_set {
    ($name:ident) => {
        // SAFETY: a plain read of a static.
        unsafe { core::ptr::read_volatile(&raw const $name) }
    };
}

mod claim;
mod connect_search;
mod count;
mod counter_maps;
mod layout;
mod netns;
mod owner_quota;
mod send;
mod sock;
mod sock_addr;
mod sockets;
mod tracepoint;
mod walk;

/// Return value of a cgroup program that lets the operation go on.
const ALLOW: i32 = 1;

/// Set by the loader for the overhead benchmark's floor: every program
/// returns at once, so what remains is the cost of the hooks themselves.
/// Read-only data the kernel freezes, so the verifier prunes the branch.
#[unsafe(no_mangle)]
static PORTMON_HOOKS_ONLY: u8 = 0;

#[inline(always)]
fn hooks_only() -> bool {
    // SAFETY: a plain read of a static; volatile so the compiler keeps it
    // for the loader to set.
    unsafe { core::ptr::read_volatile(&raw const PORTMON_HOOKS_ONLY) != 0 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panicking code path is reachable (no unwrap, no indexing); the
    // verifier rejects the object if one were.
    loop {}
}

// The ring buffer and the tracing helpers are available to GPL-compatible
// programs only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
