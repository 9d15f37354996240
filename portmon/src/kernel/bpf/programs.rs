//! The kernel programs portmon loads, where each attaches, and which may be
//! missing (an older kernel) or left out (opt-in): the catalogue the loader
//! attaches from and the readers of what is attached name.

use portmon_common::program;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The cgroup v2 root, next to any other program there (BPF_F_ALLOW_MULTI).
    CgroupRoot,
    /// A raw tracepoint (no tracefs needed, no record built per hit).
    RawTracepoint { name: &'static str },
}

/// Every program and its hook. No `syscalls:*` tracepoint: attaching one
/// slows every system call of every process on the host.
pub const PROGRAMS: &[(&str, Hook)] = &[
    (program::SOCK_RELEASE, Hook::CgroupRoot),
    (program::POST_BIND4, Hook::CgroupRoot),
    (program::POST_BIND6, Hook::CgroupRoot),
    (
        program::INET_SOCK_SET_STATE,
        Hook::RawTracepoint {
            name: "inet_sock_set_state",
        },
    ),
    (program::BIND4, Hook::CgroupRoot),
    (program::BIND6, Hook::CgroupRoot),
    (program::CONNECT4, Hook::CgroupRoot),
    (program::CONNECT6, Hook::CgroupRoot),
    (
        program::SOCK_SEND_LENGTH,
        Hook::RawTracepoint {
            name: "sock_send_length",
        },
    ),
    (program::SOCK_OPS, Hook::CgroupRoot),
];

/// Programs whose hook older kernels lack: where it cannot attach, portmon
/// runs without it (`portmon_program_attached` says 0) and says so once.
/// `sock_send_length` (Linux 6.3) is the only place a UDP send that failed
/// for want of a port shows. `walk_established`, the iterator that lists
/// every namespace's connections in one pass (Linux 6.1, and a kernel that
/// loads BPF tracing programs), only saves work.
pub const OPTIONAL: &[&str] = &[program::SOCK_SEND_LENGTH, program::WALK_ESTABLISHED];

/// Programs attached only when asked for
/// ([`LoadOptions::connect_search`](super::LoadOptions::connect_search)):
/// what they cost is more than what they tell most hosts.
pub const OPT_IN: &[&str] = &[program::SOCK_OPS];
