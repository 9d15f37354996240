//! Types and constants shared by portmon's kernel programs and its daemon.
//!
//! Everything here is plain `#[repr(C)]` data made of integers and fixed
//! arrays, with explicit padding, so that both sides agree byte for byte.
//! Rich types (`Proto`, `Family`, …) live behind the `user` feature and are
//! reached through `TryFrom`, never by transmuting kernel data.
#![no_std]

mod tables;
pub mod walk;

pub use tables::*;

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::*;

/// Names of the maps in the kernel object; the kernel crate's statics carry
/// exactly these names and the loader finds the maps by them.
pub mod map {
    /// Per-port counters in blocks of 64 ports, an array of `PortBlock`
    /// (entry 0 unused); `PORT_TABLES` says which block holds which ports.
    pub const PORT_STATS: &str = "PORT_STATS";
    /// An array of `PortTable` (entry 0 unused): where the blocks of one
    /// namespace, protocol, family and kind of counter are in `PORT_STATS`.
    pub const PORT_TABLES: &str = "PORT_TABLES";
    /// Which entry of `PORT_TABLES` is whose: `PortTableKey` → index.
    pub const PORT_TABLE_INDEX: &str = "PORT_TABLE_INDEX";
    /// The table of sockets portmon follows, one `SockSlot` each.
    pub const SOCKETS: &str = "SOCKETS";
    /// Which socket holds each slot of `SOCKETS`: its cookie, 0 for a free
    /// slot, in groups of `SLOTS_PER_GROUP` (see `SocketGroup`).
    pub const SOCKET_COOKIES: &str = "SOCKET_COOKIES";
    /// Sockets bound to port 0 and then connected, by command name
    /// (`[u8; 16]` → count): the expensive way to get an ephemeral port.
    pub const BIND_BEFORE_CONNECT: &str = "BIND_BEFORE_CONNECT";
    /// Ports the kernel chose, counted per pool: an array of `PoolKey`
    /// (entry 0 unused) saying whose each entry of `POOL_COUNTS` is.
    pub const POOL_KEYS: &str = "POOL_KEYS";
    /// The counts of `POOL_KEYS`' entries, one `u64` per CPU each.
    pub const POOL_COUNTS: &str = "POOL_COUNTS";
    /// Which entry of `POOL_KEYS` is whose: `PoolKey` → index.
    pub const POOL_INDEX: &str = "POOL_INDEX";
    /// Failures, one `FailureEvent` each.
    pub const FAILURES: &str = "FAILURES";
    /// portmon's own health counters, indexed by `slot::*`.
    pub const HEALTH: &str = "HEALTH";
    /// Entries of `PORT_TABLES` given back (a queue of `u32`): the kernel
    /// takes one from here before it takes a new one.
    pub const FREE_PORT_TABLES: &str = "FREE_PORT_TABLES";
    /// Entries of `PORT_STATS` given back, as `FREE_PORT_TABLES`.
    pub const FREE_PORT_BLOCKS: &str = "FREE_PORT_BLOCKS";
    /// Entries of `POOL_KEYS` given back, as `FREE_PORT_TABLES`.
    pub const FREE_POOLS: &str = "FREE_POOLS";
    /// Entries of the reserve of `PORT_TABLES` for the host's namespaces
    /// (see `global::SHARED_TABLES`) given back, as `FREE_PORT_TABLES`.
    pub const FREE_RESERVED_PORT_TABLES: &str = "FREE_RESERVED_PORT_TABLES";
    /// Entries of the reserve of `PORT_STATS`, as above.
    pub const FREE_RESERVED_PORT_BLOCKS: &str = "FREE_RESERVED_PORT_BLOCKS";
    /// Entries of the reserve of `POOL_KEYS`, as above.
    pub const FREE_RESERVED_POOLS: &str = "FREE_RESERVED_POOLS";
    /// When each TCP connect entered SYN_SENT, by socket cookie (an LRU
    /// hash of `u64` nanoseconds): the start of its port search.
    pub const CONNECT_SEARCH_STARTS: &str = "CONNECT_SEARCH_STARTS";
    /// How long TCP connects spent finding a local port, per namespace
    /// cookie: a per-CPU hash of `SearchHistogram`. User space deletes the
    /// entries of namespaces that are gone.
    pub const CONNECT_SEARCH: &str = "CONNECT_SEARCH";
    /// One `u64`: searches not counted because `CONNECT_SEARCH` was full.
    pub const CONNECT_SEARCH_OVERFLOW: &str = "CONNECT_SEARCH_OVERFLOW";
    /// The elements the established-hash walk iterates over, one per
    /// `walk::BUCKETS_PER_CHUNK` buckets (`u32`, unused).
    pub const WALK_CHUNKS: &str = "WALK_CHUNKS";
    /// The `OWNER_HELD` entry of each unprivileged user whose namespaces
    /// took shared entries, by kuid (a hash of `u32` to `u32`); entry 0 is
    /// every user past the map's capacity, together.
    pub const OWNER_SLOTS: &str = "OWNER_SLOTS";
    /// What each such user's namespaces hold (`OwnerHeld`), mapped into
    /// the daemon, which subtracts what it gives back.
    pub const OWNER_HELD: &str = "OWNER_HELD";
    /// The `OWNER_HELD` entry, plus one, charged for each `POOL_KEYS`
    /// entry (`u32`); 0 when none was.
    pub const POOL_OWNERS: &str = "POOL_OWNERS";
    /// The `OWNER_HELD` entry, plus one, charged for each slot of
    /// `SOCKETS` (`u32`, as many entries); 0 for a slot a privileged
    /// process claimed.
    pub const SOCKET_OWNERS: &str = "SOCKET_OWNERS";
}

/// Names of the read-only globals the loader sets before the kernel
/// verifies the programs (they are constants to the verifier).
pub mod global {
    /// `u8`: every program returns at once (the overhead benchmark's floor).
    pub const HOOKS_ONLY: &str = "PORTMON_HOOKS_ONLY";
    /// `u32`: groups in `SOCKET_COOKIES` minus one (a power of two minus one).
    pub const SOCKET_GROUPS_MASK: &str = "PORTMON_SOCKET_GROUPS_MASK";
    /// `KernelLayout`: offsets in the running kernel's structures.
    pub const KERNEL_LAYOUT: &str = "PORTMON_KERNEL_LAYOUT";
    /// `u64`: cookie of the daemon's own (the host's) namespace, whose
    /// tables and pools sit at fixed entries (`host_entry`) and whose
    /// blocks come from a reserve first: no other namespace can starve it.
    pub const HOST_NETNS: &str = "PORTMON_HOST_NETNS";
    /// `u32`: blocks one table of a namespace other than the host's may
    /// hold; counts past them go to the table's `overflow` by range class.
    pub const TABLE_BLOCK_QUOTA: &str = "PORTMON_TABLE_BLOCK_QUOTA";
    /// `u32`: the last `PORT_STATS` entry shared by every namespace. After
    /// it come the reserve of the namespaces the host's user namespace owns,
    /// up to `RESERVED_BLOCKS`, and then the host's own reserve.
    pub const SHARED_BLOCKS: &str = "PORTMON_SHARED_BLOCKS";
    /// `u32`: the last `PORT_STATS` entry of the reserve of the namespaces
    /// the host's user namespace owns (made with `CAP_SYS_ADMIN` on the
    /// host: a container runtime's, `ip netns`'): an unprivileged user's
    /// namespaces, owned by a user namespace of its own, cannot take them.
    pub const RESERVED_BLOCKS: &str = "PORTMON_RESERVED_BLOCKS";
    /// `u32`: the last `PORT_TABLES` entry shared by every namespace; those
    /// after it are the reserve, as for `RESERVED_BLOCKS`.
    pub const SHARED_TABLES: &str = "PORTMON_SHARED_TABLES";
    /// `u32`: the last `POOL_KEYS` entry shared by every namespace, as above.
    pub const SHARED_POOLS: &str = "PORTMON_SHARED_POOLS";
    /// `u8`: the state tracepoint records when each TCP connect's port
    /// search starts, for `sock_ops` to time it (`connect-search`).
    pub const CONNECT_SEARCH: &str = "PORTMON_CONNECT_SEARCH";
    /// `walk::WalkLayout`: offsets the established-hash walk reads.
    pub const WALK_LAYOUT: &str = "PORTMON_WALK_LAYOUT";
    /// `OwnerQuota`: the most shared entries one unprivileged user's
    /// namespaces may hold, so that no user crowds out another's.
    pub const OWNER_QUOTA: &str = "PORTMON_OWNER_QUOTA";
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
    /// Attached where the kernel has the tracepoint (Linux 6.3).
    pub const SOCK_SEND_LENGTH: &str = "sock_send_length";
    /// The kernel keeps 15 characters of a program's name: it lists this
    /// one as `inet_sock_set_s`.
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    /// The cgroup `sock_ops` callback: times each TCP connect's search for
    /// a local port. Attached only when asked for (`connect-search`).
    pub const SOCK_OPS: &str = "sock_ops";
    /// The iterator that walks the host's established-socket hash
    /// (`walk`); never attached to a hook, only read.
    pub const WALK_ESTABLISHED: &str = "walk_established";
}

/// Slots of the `HEALTH` array.
pub mod slot {
    /// Failure events the ring buffer had no room for.
    pub const EVENTS_DROPPED: u32 = 0;
    /// Counter increments lost because `PORT_STATS` had no block left.
    pub const PORT_STATS_OVERFLOW: u32 = 1;
    /// Sockets not followed because their slots in `SOCKETS` were taken,
    /// or their user held its quota of them.
    pub const SOCKETS_OVERFLOW: u32 = 2;
    /// Failures detected in the kernel (sent or dropped): the ground truth the
    /// user-space error counts are checked against.
    pub const FAILURES_SEEN: u32 = 3;
    /// Updates lost because `BIND_BEFORE_CONNECT` was full.
    pub const BIND_BEFORE_CONNECT_OVERFLOW: u32 = 4;
    /// Counter increments lost because `PORT_TABLES` was full.
    pub const PORT_TABLES_OVERFLOW: u32 = 5;
    /// Shared entries of `PORT_STATS` handed out new so far (the next is
    /// this plus one), not counting those taken again from the free queue;
    /// past the shared part once it is all handed out.
    pub const PORT_BLOCKS_TAKEN: u32 = 6;
    /// Shared entries of `PORT_TABLES` handed out new so far, as above (the
    /// next is this plus one plus `capacity::HOST_ENTRIES`).
    pub const PORT_TABLES_TAKEN: u32 = 7;
    /// Counts lost because `POOL_KEYS` was full.
    pub const POOLS_OVERFLOW: u32 = 8;
    /// Entries of `POOL_KEYS` handed out so far, as `PORT_TABLES_TAKEN`.
    pub const POOLS_TAKEN: u32 = 9;
    /// Entries of the host's reserve of `PORT_STATS` handed out so far.
    pub const HOST_BLOCKS_TAKEN: u32 = 10;
    /// Entries of the reserve of `PORT_TABLES` (`global::SHARED_TABLES`)
    /// handed out new so far, as `PORT_TABLES_TAKEN`.
    pub const RESERVED_TABLES_TAKEN: u32 = 11;
    /// Entries of the reserve of `PORT_STATS`, as above.
    pub const RESERVED_BLOCKS_TAKEN: u32 = 12;
    /// Entries of the reserve of `POOL_KEYS`, as above.
    pub const RESERVED_POOLS_TAKEN: u32 = 13;
    /// Shared entries refused to an unprivileged user's namespace because
    /// that user's namespaces hold their quota (`global::OWNER_QUOTA`);
    /// the count is then lost as for a full map (tables, pools) or kept in
    /// the table's range class (blocks). Also `SOCKETS` slots refused to
    /// an unprivileged user's processes, whose sockets then go unfollowed
    /// as for a full table (counted in `SOCKETS_OVERFLOW` too).
    pub const OWNER_QUOTA_REFUSED: u32 = 14;
    /// Entries of `OWNER_HELD` handed out so far (the next is this plus one).
    pub const OWNER_SLOTS_TAKEN: u32 = 15;
    /// Number of slots.
    pub const COUNT: u32 = 16;
}

/// Default capacities; the daemon may resize maps before load.
pub mod capacity {
    /// Blocks of `PORTS_PER_BLOCK` ports (per namespace, protocol, family
    /// and kind of counter). A host whose namespaces come and go by the
    /// hundred a second raises it (`port-stats-capacity`): the maps hold
    /// the tables of the namespaces of the last couple of seconds.
    pub const PORT_STATS: u32 = 1 << 12;
    /// Blocks per `PORT_TABLES` entry the loader provides for: a table
    /// indexes every block of its namespace, protocol, family and kind, and
    /// most use a few (a listener, a destination) or a range of them (the
    /// ephemeral ports).
    pub const BLOCKS_PER_TABLE_ENTRY: u32 = 8;
    /// Fewest `PORT_TABLES` entries, whatever the blocks.
    pub const MIN_PORT_TABLES: u32 = 64;
    /// Sockets followed at once (bound, listening, connecting, connected);
    /// a power of two, at least `SLOTS_PER_GROUP`.
    pub const SOCKETS: u32 = 1 << 16;
    pub const BIND_BEFORE_CONNECT: u32 = 1 << 10;
    /// Pools counted (`POOL_KEYS`): twelve per namespace at most (two
    /// protocols, two families, three ways of assigning).
    pub const POOLS: u32 = 1 << 12;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const FAILURES_BYTES: u32 = 1 << 18;
    /// Tables and pools of the host's namespace, at fixed entries 1 to 12
    /// (two protocols, two families, three kinds or ways), before the
    /// shared ones.
    pub const HOST_ENTRIES: u32 = 12;
    /// Blocks of `PORT_STATS` only the host's namespace takes, after the
    /// shared ones: 16,384 ports.
    pub const HOST_BLOCKS: u32 = 256;
    /// Blocks one namespace other than the host's may hold, split evenly
    /// over its (at most `HOST_ENTRIES`) tables: 85 blocks, 5,440 ports, per
    /// table; a quarter of the default `PORT_STATS`.
    pub const BLOCKS_PER_NAMESPACE: u32 = 1024;
    /// Of the entries of `PORT_STATS`, `PORT_TABLES` and `POOL_KEYS` that
    /// are not the host's own, the part kept for namespaces the host's user
    /// namespace owns (a pod's, a root container's): half, so that an
    /// unprivileged user's namespaces fill at most the other half, and the
    /// host-owned ones take from both.
    pub const fn reserved_part(entries: u32) -> u32 {
        entries / 2
    }
    /// Namespaces whose connects' port searches are timed
    /// (`CONNECT_SEARCH`).
    pub const CONNECT_SEARCH_NAMESPACES: u32 = 1 << 10;
    /// Connects between SYN_SENT and their `sock_ops` callback at once
    /// (`CONNECT_SEARCH_STARTS`): one per thread inside connect(), so a
    /// few hundred at most; an LRU map drops the oldest, which only a
    /// connect that never reached the callback leaves behind.
    pub const CONNECT_SEARCH_STARTS: u32 = 1 << 12;
    /// Unprivileged users whose namespaces' shared entries are counted
    /// apart (`OWNER_HELD`); users past it share the first entry.
    pub const OWNERS: u32 = 1 << 10;
    /// The share of each shared part one user's namespaces may hold, in
    /// percent, unless configured (`max-shared-percent-per-user`).
    pub const OWNER_PERCENT: u32 = 25;
}

/// The fixed entry (1 to `capacity::HOST_ENTRIES`) of the host's table or
/// pool for a protocol, family and kind (`kind::*`) or way (`assigned::*`
/// minus one); `None` for anything else.
#[inline(always)]
pub fn host_entry(proto: u8, family: u8, which: u8) -> Option<u32> {
    let p: u32 = match proto {
        proto::TCP => 0,
        proto::UDP => 1,
        _ => return None,
    };
    let f: u32 = match family {
        family::INET => 0,
        family::INET6 => 1,
        _ => return None,
    };
    if which >= 3 {
        return None;
    }
    Some(1 + (p * 2 + f) * 3 + u32::from(which))
}

/// IANA range classes a table counts overflow by (`PortTable::overflow`).
pub mod range_class {
    /// System ports, 0–1023.
    pub const SYSTEM: usize = 0;
    /// User ports, 1024–49151.
    pub const USER: usize = 1;
    /// Dynamic ports, 49152–65535.
    pub const DYNAMIC: usize = 2;
    /// Number of classes.
    pub const COUNT: usize = 3;

    /// The class of `port`.
    #[inline(always)]
    pub const fn of(port: u16) -> usize {
        if port < 1024 {
            SYSTEM
        } else if port < 49152 {
            USER
        } else {
            DYNAMIC
        }
    }
}

/// Buckets of a `SearchHistogram`. Bucket `i` below the last counts
/// searches that took at most `SEARCH_FIRST_BOUND_NS << i` nanoseconds
/// (and more than the bucket before's bound); the last counts the longer
/// ones. From 256 ns, about what finding a port in an empty range costs,
/// to 2^30 ns (1.07 s), past which a connect is not searching any more.
pub const SEARCH_BUCKETS: usize = 24;
/// Upper bound of the first bucket, in nanoseconds.
pub const SEARCH_FIRST_BOUND_NS: u64 = 1 << SEARCH_FIRST_BOUND_BITS;
/// `SEARCH_FIRST_BOUND_NS` as a power of two.
pub const SEARCH_FIRST_BOUND_BITS: u32 = 8;

/// Value of `CONNECT_SEARCH`: one namespace's TCP connects, by how long
/// each spent from SYN_SENT to `tcp_connect()`, per CPU. Counts only grow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchHistogram {
    /// Searches per bucket (not cumulative).
    pub buckets: [u64; SEARCH_BUCKETS],
    /// Sum of the searches' durations, in nanoseconds.
    pub sum_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SearchHistogram>() == 8 * (SEARCH_BUCKETS + 1));

impl SearchHistogram {
    pub const ZERO: Self = Self {
        buckets: [0; SEARCH_BUCKETS],
        sum_ns: 0,
    };

    /// The bucket a search of `ns` nanoseconds falls in: the smallest
    /// whose bound is at least `ns`. Branches instead of `leading_zeros`,
    /// which the BPF target has no instruction for.
    #[inline(always)]
    pub fn bucket(ns: u64) -> usize {
        // Bits of ns - 1: the power of two at or above ns.
        let mut x = ns.saturating_sub(1);
        let mut bits = 0u32;
        for shift in [32u32, 16, 8, 4, 2, 1] {
            if x >> shift != 0 {
                x >>= shift;
                bits += shift;
            }
        }
        bits += u32::from(x != 0);
        let i = bits.saturating_sub(SEARCH_FIRST_BOUND_BITS) as usize;
        if i < SEARCH_BUCKETS {
            i
        } else {
            SEARCH_BUCKETS - 1
        }
    }
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

/// What a `PORT_STATS` block counts: ports a program chose. Ports the
/// kernel chose from the ephemeral pool are counted per pool instead
/// (`assigned::*`): one per-port counter per random port would miss the
/// cache on every count, and nobody reads a random port's own count.
pub mod kind {
    /// Successful `bind()`s to the port, asked for by number.
    pub const BINDS: u8 = 0;
    /// Successful `listen()`s on the port.
    pub const LISTENS: u8 = 1;
    /// Established outbound connections to the port (the destination).
    pub const CONNECTS_TO: u8 = 2;
    /// Number of kinds.
    pub const COUNT: u8 = 3;
}

/// How the kernel handed out a port from the ephemeral pool (`PoolKey::how`).
pub mod assigned {
    /// `bind()` to port 0 (`inet_csk_get_port`, `udp_lib_get_port`).
    pub const BIND: u8 = 1;
    /// A TCP connect from a socket without a port (`__inet_hash_connect`).
    pub const CONNECT: u8 = 2;
    /// A UDP socket used without a port, by connect(), sendto() or
    /// sendmsg() (`inet_autobind`).
    pub const AUTOBIND: u8 = 3;
    /// Ways, for per-CPU caches indexed by them.
    pub const COUNT: u8 = 4;
}

/// TCP states as the kernel numbers them (`TCP_*`, include/net/tcp_states.h),
/// in `struct sock_common`'s `skc_state` and the state tracepoint's arguments.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Operations a failure belongs to.
pub mod op {
    pub const BIND: u8 = 1;
    pub const CONNECT: u8 = 2;
    /// sendto() or sendmsg() on a UDP socket without a port.
    pub const SEND: u8 = 3;
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

/// Slots per group of `SOCKET_COOKIES`, and the `SOCKETS` entries a group
/// spans (the last of which stays unused).
pub const SLOTS_PER_GROUP: usize = 8;
/// Slots of a group that hold sockets; the last word counts elsewhere.
pub const SOCKETS_PER_GROUP: usize = SLOTS_PER_GROUP - 1;

/// One cache line of `SOCKET_COOKIES`: the cookies of the sockets in the
/// group's slots (0: free), and how many sockets whose first group this is
/// were placed in their second group because this one was full. A socket
/// not in its first group, with that count at zero, is not followed: one
/// cache line answers for the sockets portmon does not follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketGroup {
    pub cookies: [u64; SOCKETS_PER_GROUP],
    pub displaced: u64,
}
const _: () = assert!(core::mem::size_of::<SocketGroup>() == 64);

/// Pending operations of a `SockSlot`, settled at the socket's next event.
pub mod pending {
    pub const NONE: u8 = 0;
    /// bind() entered; post_bind clears it on success.
    pub const BIND: u8 = 1;
    /// UDP connect() on an unbound socket: its auto-bind's outcome shows as
    /// the socket's local port at its next event.
    pub const UDP_CONNECT: u8 = 2;
}

/// `SockSlot::flags`.
pub mod sock_flag {
    /// The socket holds `local_port` by bind().
    pub const BOUND: u8 = 1;
    /// bind() asked for port 0: the kernel chose the port and gives it
    /// back when a connection on it closes (no `SOCK_BINDPORT_LOCK`).
    pub const BOUND_TO_ZERO: u8 = 2;
    /// The socket listens on `local_port`.
    pub const LISTENING: u8 = 4;
    /// A live outbound connection from `local_port` to `remote_port`: TCP
    /// established by connect(), or UDP connected.
    pub const CONNECTED: u8 = 8;
    /// A UDP socket whose auto-bind was counted: its port is not to be
    /// counted again when it closes.
    pub const AUTOBOUND: u8 = 16;
}

/// What portmon knows of a socket it follows (`SOCKETS`): who made it, the
/// ports it holds and an operation whose outcome is not yet known. User
/// space counts the live sockets per port from this table and joins it to
/// the socket inventory by cookie (`SOCKET_COOKIES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockSlot {
    /// Network namespace cookie.
    pub netns: u64,
    /// cgroup v2 id of the process that first bound or connected it.
    pub cgroup: u64,
    /// Command name of that process, NUL padded; recorded at a bind() to a
    /// fixed port only (a service's), all zero for a socket first seen at
    /// bind(0) or connect() (a client's: the helper costs as much as the
    /// rest of the hook, and user space names the pid).
    pub comm: [u8; 16],
    /// Address asked for by the pending operation (IPv4 in the first four
    /// bytes, network order).
    pub pending_addr: [u8; 16],
    /// Process id (tgid) of that process.
    pub pid: u32,
    /// Port this socket holds (host order), 0 if none.
    pub local_port: u16,
    /// Destination port of its live connection (host order), 0 if none.
    pub remote_port: u16,
    /// Port asked for by the pending operation, host order.
    pub pending_port: u16,
    pub family: u8,
    pub proto: u8,
    /// `sock_flag::*`.
    pub flags: u8,
    /// `pending::*`.
    pub pending: u8,
    /// Nonzero once a TCP socket still connecting was closed: the state
    /// tracepoint gives the slot back at its close transition. A byte of
    /// its own, because the softirq that completes the connect may write
    /// `flags` at the same time.
    pub released: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<SockSlot>() == 64);

/// Offsets (bytes) of the fields the programs read from kernel structures
/// that have no stable BPF view, taken from the running kernel's BTF by the
/// loader. The defaults are those of Linux 6.x on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct sock_common`, `skc_cookie`.
    pub skc_cookie: u32,
    /// `struct sock_common`, `skc_net` (a `struct net *`).
    pub skc_net: u32,
    /// `struct sock_common`, `skc_v6_daddr`.
    pub skc_v6_daddr: u32,
    /// `struct net`, `net_cookie`.
    pub net_cookie: u32,
    /// `struct sock`, `sk_protocol` (a `u16` since Linux 5.6).
    pub sk_protocol: u32,
    /// `struct net`, `user_ns` (a `struct user_namespace *`).
    pub net_user_ns: u32,
    /// `struct user_namespace`, `level` (an `int`: 0 for the host's).
    pub user_ns_level: u32,
    /// `struct user_namespace`, `parent` (a `struct user_namespace *`).
    pub user_ns_parent: u32,
    /// `struct user_namespace`, `owner` (a `kuid_t`: the user that made it).
    pub user_ns_owner: u32,
    /// `struct task_struct`, `cred` (the task's acting credentials).
    pub task_cred: u32,
    /// `struct cred`, `user_ns` (a `struct user_namespace *`).
    pub cred_user_ns: u32,
    /// `struct cred`, `uid` (a `kuid_t`: the real uid, as the host sees it).
    pub cred_uid: u32,
}
const _: () = assert!(core::mem::size_of::<KernelLayout>() == 48);

/// Offsets in `struct sock_common` (include/net/sock.h) that have not moved
/// since Linux 2.6.38, because socket lookups compare them as words: the
/// loader checks them against BTF and the programs use them as constants.
pub mod sock_common {
    pub const SKC_DADDR: u32 = 0;
    pub const SKC_HASH: u32 = 8;
    pub const SKC_DPORT: u32 = 12;
    pub const SKC_NUM: u32 = 14;
    pub const SKC_FAMILY: u32 = 16;
    /// The bytes the programs read at once to get all of the above.
    pub const HEAD_LEN: usize = 20;
}

/// One failed bind or connect, sent through the `FAILURES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureEvent {
    /// Network namespace cookie; 0 where the hook could not tell.
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
