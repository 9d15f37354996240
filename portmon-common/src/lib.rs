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
    /// Who bound, listens on or connected a socket still open, socket cookie → `Owner`.
    pub const OWNERS: &str = "OWNERS";
    /// Sockets bound to port 0 and then connected, by command name
    /// (`[u8; 16]` → count): the expensive way to get an ephemeral port.
    pub const BIND_BEFORE_CONNECT: &str = "BIND_BEFORE_CONNECT";
    /// Failures, one `FailureEvent` each.
    pub const FAILURES: &str = "FAILURES";
    /// portmon's own health counters, indexed by `slot::*`.
    pub const HEALTH: &str = "HEALTH";
    /// Per-socket state between hooks, socket cookie → `SockState`.
    pub const SOCKETS: &str = "SOCKETS";
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
    /// The kernel keeps 15 characters of a program's name: it lists this
    /// one as `inet_sock_set_s`.
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
    /// Updates lost because `BIND_BEFORE_CONNECT` was full.
    pub const BIND_BEFORE_CONNECT_OVERFLOW: u32 = 4;
    /// Number of slots.
    pub const COUNT: u32 = 5;
}

/// Default capacities; the daemon may resize maps before load.
pub mod capacity {
    pub const PORT_STATS: u32 = 1 << 16;
    /// Sockets tracked between hooks (bound, listening, UDP connecting).
    pub const SOCKETS: u32 = 1 << 16;
    pub const OWNERS: u32 = 1 << 16;
    pub const BIND_BEFORE_CONNECT: u32 = 1 << 10;
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

/// Value of `OWNERS`: the process that bound a fixed port, listened or connected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Network namespace cookie.
    pub netns: u64,
    /// cgroup v2 id.
    pub cgroup: u64,
    /// Command name, NUL padded.
    pub comm: [u8; 16],
    /// Process id (tgid).
    pub pid: u32,
    pub uid: u32,
}
const _: () = assert!(core::mem::size_of::<Owner>() == 40);

/// Pending operations of a `SockState`, settled at the socket's next event.
pub mod pending {
    pub const NONE: u8 = 0;
    /// bind() entered; post_bind clears it on success.
    pub const BIND: u8 = 1;
    /// UDP connect() on an unbound socket: its auto-bind's outcome shows as
    /// the socket's local port at its next event.
    pub const UDP_CONNECT: u8 = 2;
}

/// `SockState::flags`.
pub mod sock_flag {
    /// The socket was bound to port 0 by bind(), so a connect() after it
    /// took its port the expensive, exclusive way.
    pub const BOUND_TO_ZERO: u8 = 1;
}

/// What the kernel programs remember of a socket between its hooks
/// (`SOCKETS`, by socket cookie): explicitly bound sockets, listeners, and
/// UDP sockets connecting unbound. User space reads it to tell ports held
/// by bind() or listen() — exclusive, out of reach of every connect() —
/// from ports connect() picked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// Address asked for by the pending operation (IPv4 in the first four
    /// bytes, network order).
    pub pending_addr: [u8; 16],
    /// Local port this socket holds by bind() or listen() (and in
    /// `PortStats::live`), 0 if none.
    pub local_port: u16,
    /// Remote port this (UDP) socket holds in `PortStats::live`, 0 if none.
    pub remote_port: u16,
    /// Port asked for by the pending operation, host order.
    pub pending_port: u16,
    pub pending: u8,
    pub flags: u8,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockState>() == 32);

/// One failed bind or connect, sent through the `FAILURES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureEvent {
    /// Network namespace cookie; 0 where the hook cannot tell (the state
    /// tracepoint): user space then finds it through the thread, `tid`.
    pub netns: u64,
    pub cgroup: u64,
    pub socket_cookie: u64,
    /// bind: the local address asked for; connect: the remote address.
    /// IPv4 in the first four bytes, network byte order.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// `errno::*`; `UNRESOLVED` when only user space can tell.
    pub errno: u32,
    /// bind: the port asked for; connect: the remote port. Host byte order.
    pub port: u16,
    pub family: u8,
    pub proto: u8,
    /// `op::*`.
    pub op: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FailureEvent>() == 80);
