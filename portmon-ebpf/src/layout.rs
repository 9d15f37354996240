//! Reads from kernel structures that have no stable BPF view: the socket
//! behind a raw tracepoint or a released socket. Offsets that moved between
//! kernel versions come from the running kernel's BTF through the loader;
//! the head of `struct sock_common` has not moved since Linux 2.6.38.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_current_task, bpf_get_current_task_btf},
};
use portmon_common::{sock_common, KernelLayout};

/// Set by the loader from `/sys/kernel/btf/vmlinux`.
#[unsafe(no_mangle)]
static PORTMON_KERNEL_LAYOUT: KernelLayout = KernelLayout {
    skc_cookie: 88,
    skc_net: 48,
    skc_v6_daddr: 56,
    net_cookie: 120,
    // Always set by the loader; 0 is no offset of these.
    sk_protocol: 0,
    net_user_ns: 0,
    user_ns_level: 0,
    user_ns_parent: 0,
    user_ns_owner: 0,
    task_cred: 0,
    cred_user_ns: 0,
    cred_uid: 0,
};

#[inline(always)]
fn layout() -> KernelLayout {
    // SAFETY: a plain read of a static; volatile so the compiler keeps it
    // for the loader to set.
    unsafe { core::ptr::read_volatile(&raw const PORTMON_KERNEL_LAYOUT) }
}

/// The fields of `struct sock_common` before `skc_state`.
#[derive(Clone, Copy)]
pub struct Head {
    /// Destination address, network order (IPv4 only).
    pub daddr: [u8; 4],
    /// Set by the established-hash insert (`inet_ehash_insert`), else 0.
    pub hash: u32,
    /// Destination port, host order.
    pub dport: u16,
    /// Local port, host order (`inet_num`).
    pub num: u16,
    pub family: u16,
}

/// Reads `T` at `offset` bytes into the object at `base`; the helper
/// checks the address and fails cleanly.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The head of a socket, in one read.
#[inline(always)]
pub fn head(sk: u64) -> Option<Head> {
    let raw: [u8; sock_common::HEAD_LEN] = read(sk, 0)?;
    let word = |at: u32| {
        let i = at as usize;
        [raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]
    };
    let half = |at: u32| {
        let i = at as usize;
        [raw[i], raw[i + 1]]
    };
    Some(Head {
        daddr: word(sock_common::SKC_DADDR),
        hash: u32::from_ne_bytes(word(sock_common::SKC_HASH)),
        dport: u16::from_be_bytes(half(sock_common::SKC_DPORT)),
        num: u16::from_ne_bytes(half(sock_common::SKC_NUM)),
        family: u16::from_ne_bytes(half(sock_common::SKC_FAMILY)),
    })
}

/// The socket's cookie; 0 until something asked for it (a bind or connect
/// hook, a sock_diag dump), which no socket portmon follows lacks.
#[inline(always)]
pub fn cookie(sk: u64) -> u64 {
    read(sk, layout().skc_cookie).unwrap_or(0)
}

/// The cookie of the socket's network namespace, as `bpf_get_netns_cookie`
/// gives it to the hooks that can call it.
#[inline(always)]
pub fn netns(sk: u64) -> u64 {
    let l = layout();
    read::<u64>(sk, l.skc_net)
        .and_then(|net| read(net, l.net_cookie))
        .unwrap_or(0)
}

/// The kernel socket of a sock_addr context: the first member of the
/// `struct bpf_sock_addr_kern` the context points to (include/linux/filter.h).
/// The context's own `sk` is a pointer the verifier allows no arithmetic on,
/// so it cannot be read through; 0 if the read fails.
#[inline(always)]
pub fn sock_addr_sk(ctx: u64) -> u64 {
    read(ctx, 0).unwrap_or(0)
}

/// The nesting level of the user namespace that owns the socket's network
/// namespace: 0 for the host's; `None` if it cannot be read.
#[inline(always)]
pub fn user_ns_level(sk: u64) -> Option<i32> {
    let l = layout();
    let net: u64 = read(sk, l.skc_net)?;
    let user_ns: u64 = read(net, l.net_user_ns)?;
    read(user_ns, l.user_ns_level)
}

/// User namespaces nest at most this deep (`user_namespace.c`).
const USER_NS_MAX_LEVEL: i32 = 32;

/// The user that made the outermost user namespace under the host's that
/// owns the socket's network namespace: the one who made it all, as only
/// a process in the host's user namespace makes a user namespace of level
/// 1, and an unprivileged process there runs as its own user. (The owner
/// of a deeper one may be any uid the user maps, 65,536 of them with a
/// rootless container's subordinate ids.) `None` for the host's own, or if
/// it cannot be read.
#[inline(always)]
pub fn owner_uid(sk: u64) -> Option<u32> {
    let l = layout();
    let net: u64 = read(sk, l.skc_net)?;
    let user_ns: u64 = read(net, l.net_user_ns)?;
    outermost_owner(user_ns)
}

/// The current task's real uid as the host sees it, what
/// `bpf_get_current_uid_gid` gives: read through the task's typed pointer,
/// two loads the verifier checks against the kernel's BTF (the offsets are
/// the loader's constants), where the helper call cost every claim two to
/// three times as much (docs/performance.md).
#[inline(always)]
pub fn current_kuid() -> u32 {
    let l = layout();
    // SAFETY: the helper's pointer is the running task, valid for this run;
    // the verifier turns both loads into ones that read 0 should they
    // fault, and accepts them only at the offsets of `cred` and `uid`.
    unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        let cred = core::ptr::read_volatile(task.add(l.task_cred as usize).cast::<*const u8>());
        core::ptr::read_volatile(cred.add(l.cred_uid as usize).cast::<u32>())
    }
}

/// The user the current task acts for, as `owner_uid` names users: `kuid`
/// (the task's own, as the host sees it) in the host's user namespace,
/// else the user that made the outermost one above the task's, so that
/// the ids a user maps into its user namespaces all count as that user.
#[inline(always)]
pub fn current_user(kuid: u32) -> u32 {
    let l = layout();
    // SAFETY: the helper takes no arguments; its value is only read through.
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, l.task_cred)
        .and_then(|cred| read::<u64>(cred, l.cred_user_ns))
        .and_then(outermost_owner)
        .unwrap_or(kuid)
}

/// The owner of the level-1 user namespace at or above `user_ns`; `None`
/// for the host's, or if it cannot be read.
#[inline(always)]
fn outermost_owner(mut user_ns: u64) -> Option<u32> {
    let l = layout();
    let mut level: i32 = read(user_ns, l.user_ns_level)?;
    if !(1..=USER_NS_MAX_LEVEL).contains(&level) {
        return None;
    }
    for _ in 1..USER_NS_MAX_LEVEL {
        if level == 1 {
            break;
        }
        user_ns = read(user_ns, l.user_ns_parent)?;
        level -= 1;
    }
    read(user_ns, l.user_ns_owner)
}

/// The socket's protocol (`IPPROTO_*`); 0 if it cannot be read.
#[inline(always)]
pub fn protocol(sk: u64) -> u16 {
    read(sk, layout().sk_protocol).unwrap_or(0)
}

/// The IPv6 destination address, network order.
#[inline(always)]
pub fn v6_daddr(sk: u64) -> [u8; 16] {
    read(sk, layout().skc_v6_daddr).unwrap_or([0; 16])
}
