//! Types and constants shared by portmon's kernel programs and its daemon.
//!
//! Everything here is plain `#[repr(C)]` data made of integers and fixed
//! arrays, with explicit padding, so that both sides agree byte for byte.
//! Rich types (`Proto`, `Family`, …) live behind the `user` feature and are
//! reached through `TryFrom`, never by transmuting kernel data.
#![no_std]

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::*;

/// Names of the maps in the kernel object; the kernel crate's statics carry
/// exactly these names and the loader finds the maps by them.
pub mod map {
    /// Per-port counters, `PortKey` → `PortStats`.
    pub const PORT_STATS: &str = "PORT_STATS";
    /// What portmon knows of each socket it saw bind, listen or connect,
    /// socket cookie → `SockRecord`.
    pub const SOCKETS: &str = "SOCKETS";
    /// TCP connects under way, thread (pid_tgid) → `ConnectAttempt`.
    pub const CONNECTING: &str = "CONNECTING";
    /// Failures, one `FailureEvent` each.
    pub const FAILURES: &str = "FAILURES";
    /// portmon's own health counters, indexed by `slot::*`.
    pub const HEALTH: &str = "HEALTH";
}

/// Names of the kernel programs, after the hook each attaches to.
pub mod program {
    pub const BIND4: &str = "bind4";
    pub const BIND6: &str = "bind6";
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const POST_BIND4: &str = "post_bind4";
    pub const POST_BIND6: &str = "post_bind6";
    pub const SOCK_RELEASE: &str = "sock_release";
    pub const SOCK_OPS: &str = "sock_ops";
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
}

/// Slots of the `HEALTH` array.
pub mod slot {
    /// Failure events the ring buffer had no room for.
    pub const EVENTS_DROPPED: u32 = 0;
    /// Counter increments lost because `PORT_STATS` was full.
    pub const PORT_STATS_OVERFLOW: u32 = 1;
    /// Sockets not tracked because `SOCKETS` was full.
    pub const SOCKETS_OVERFLOW: u32 = 2;
    /// Failures detected in the kernel (sent or dropped): the ground truth the
    /// user-space error counts are checked against.
    pub const FAILURES_SEEN: u32 = 3;
    /// Number of slots.
    pub const COUNT: u32 = 4;
}

/// Default capacities; the daemon may resize maps before load.
pub mod capacity {
    pub const PORT_STATS: u32 = 1 << 16;
    pub const SOCKETS: u32 = 1 << 18;
    pub const CONNECTING: u32 = 1 << 14;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const FAILURES_BYTES: u32 = 1 << 18;
}

/// IP protocol numbers as the kernel reports them (`IPPROTO_*`).
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Address families as the kernel reports them (`AF_*`).
pub mod family {
    pub const INET: u8 = 2;
    pub const INET6: u8 = 10;
}

/// Which end of a connection a port is.
pub mod role {
    /// A port this host holds: bound, listening, or the ephemeral port of a connect.
    pub const LOCAL: u8 = 0;
    /// The destination port of an outbound connect.
    pub const REMOTE: u8 = 1;
}

/// Operations a failure belongs to.
pub mod op {
    pub const BIND: u8 = 1;
    pub const CONNECT: u8 = 2;
}

/// The errno values the kernel side can name itself (positive, as in `errno`).
pub mod errno {
    /// Not yet known in the kernel; user space classifies it.
    pub const UNRESOLVED: u32 = 0;
    pub const EACCES: u32 = 13;
    pub const EAGAIN: u32 = 11;
    pub const EADDRINUSE: u32 = 98;
    pub const EADDRNOTAVAIL: u32 = 99;
}

/// Pending operations a `SockRecord` can hold until their outcome shows.
pub mod pending {
    pub const NONE: u8 = 0;
    /// `bind()` entered; `post_bind` clears it on success.
    pub const BIND: u8 = 1;
    /// UDP `connect()` on an unbound socket; its auto-bind's outcome shows
    /// as the socket's local port at its next event.
    pub const UDP_CONNECT: u8 = 2;
}

/// Key of `PORT_STATS`: one port of one protocol and family in one network
/// namespace, from one end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// Network namespace cookie (`bpf_get_netns_cookie`).
    pub netns: u64,
    /// Port in host byte order.
    pub port: u16,
    /// `proto::*`.
    pub proto: u8,
    /// `family::*`.
    pub family: u8,
    /// `role::*`.
    pub role: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 16);

/// Value of `PORT_STATS`. Counters only grow; `live` goes up and down.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Successful `bind()`s that ended on this port (local role).
    pub binds: u64,
    /// Successful `listen()`s on this port (local role).
    pub listens: u64,
    /// Established outbound connections: from this ephemeral port (local
    /// role) or to this destination port (remote role), TCP and UDP.
    pub connects: u64,
    /// Sockets portmon saw take this port and not yet close.
    pub live: i64,
}
const _: () = assert!(core::mem::size_of::<PortStats>() == 32);

/// Value of `SOCKETS`: what the kernel side remembers of one socket between
/// its hooks. Keyed by socket cookie, so user space can join it with the
/// cookies `sock_diag` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRecord {
    /// Network namespace cookie.
    pub netns: u64,
    /// cgroup v2 id of the process that bound, listened or connected.
    pub cgroup: u64,
    /// Address of the pending operation (bind: local; connect: remote),
    /// IPv4 in the first four bytes, network byte order.
    pub pending_addr: [u8; 16],
    /// Command name of that process, NUL padded.
    pub comm: [u8; 16],
    /// Its process id (tgid).
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Local port counted in `PortStats::live`, 0 if none.
    pub local_port: u16,
    /// Remote port counted in `PortStats::live`, 0 if none.
    pub remote_port: u16,
    /// Port asked for by the pending operation.
    pub pending_port: u16,
    /// `family::*`.
    pub family: u8,
    /// `proto::*`.
    pub proto: u8,
    /// `pending::*`.
    pub pending: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<SockRecord>() == 72);

/// Value of `CONNECTING`: the TCP connect a thread is in, so the state
/// tracepoint (which has no namespace or cookie) can attribute a failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectAttempt {
    pub netns: u64,
    pub socket_cookie: u64,
    /// Remote address, IPv4 in the first four bytes, network byte order.
    pub addr: [u8; 16],
    /// Remote port, host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<ConnectAttempt>() == 40);

/// One failed bind or connect, sent through the `FAILURES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureEvent {
    pub netns: u64,
    pub cgroup: u64,
    pub socket_cookie: u64,
    /// bind: the local address asked for; connect: the remote address.
    /// IPv4 in the first four bytes, network byte order.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub pid: u32,
    pub uid: u32,
    /// `errno::*`; `UNRESOLVED` when only user space can tell.
    pub errno: u32,
    /// bind: the port asked for; connect: the remote port. Host byte order.
    pub port: u16,
    pub family: u8,
    pub proto: u8,
    /// `op::*`.
    pub op: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<FailureEvent>() == 80);
