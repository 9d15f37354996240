//! The walk of the host's established-socket hash table: one pass over
//! every TCP connection, TIME_WAIT and request socket of every namespace
//! that shares the host's table, where `sock_diag` needs one pass per
//! namespace, each over the whole table (docs/performance.md, "One
//! namespace against many").
//!
//! An iterator program runs once per element of the `WALK_CHUNKS` array;
//! element `i` covers buckets `i * BUCKETS_PER_CHUNK ..` and writes a
//! [`Record`] per socket into the reader's buffer. A read of the iterator
//! is the snapshot.

/// Buckets one program run covers, and sockets one bucket may hold before
/// the walk gives it up as [`kind::OVERFLOW`]. Older verifiers (Linux 6.1)
/// follow every pass of the two loops and give up past a million
/// instructions, so their product stays small; a long chain is what a
/// small table under many sockets has (a 2 GiB host gets 16,384 buckets),
/// so the buckets are few and the chains long.
pub const BUCKETS_PER_CHUNK: u32 = 2;
pub const CHAIN_LIMIT: u32 = 32;
/// The element count is the table's buckets divided by
/// [`BUCKETS_PER_CHUNK`]; a table this large would be over 4 GiB.
pub const MAX_CHUNKS: u32 = 1 << 25;

/// What a record is.
pub mod kind {
    /// A socket.
    pub const SOCKET: u8 = 0;
    /// A bucket held more than `CHAIN_LIMIT` sockets, or its chain led
    /// into another bucket (a socket freed and reused under the walk): the
    /// walk is incomplete.
    pub const OVERFLOW: u8 = 1;
    /// The reader's namespace has a table of its own
    /// (`net.ipv4.tcp_child_ehash_entries`), or the walk could not read its
    /// way to the table: nothing was walked.
    pub const NO_TABLE: u8 = 2;
}

/// One socket found by the walk, or a [`kind`] marker.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Cookie of the socket's network namespace.
    pub netns: u64,
    /// The socket's cookie; 0 if nothing has asked for it yet.
    pub cookie: u64,
    /// Local address: the first four bytes for IPv4, network order.
    pub local: [u8; 16],
    /// Remote address, as `local`.
    pub remote: [u8; 16],
    /// Inode of the socket's file; 0 for sockets without one (TIME_WAIT,
    /// request and orphaned sockets).
    pub inode: u32,
    /// Owner's user id (0 where `sock_diag` says 0: TIME_WAIT, requests).
    pub uid: u32,
    /// Local port, host order.
    pub local_port: u16,
    /// Remote port, host order.
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `TCP_*` state (`tcp_state`).
    pub state: u8,
    /// [`kind`].
    pub kind: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Record>() == 64);

impl Record {
    /// A record of `kind` with every field 0.
    pub const fn zeroed(kind: u8) -> Self {
        Self {
            netns: 0,
            cookie: 0,
            local: [0; 16],
            remote: [0; 16],
            inode: 0,
            uid: 0,
            local_port: 0,
            remote_port: 0,
            family: 0,
            state: 0,
            kind,
            _pad: 0,
        }
    }
}

/// Offsets (bytes) the walk reads that moved between kernels, from the
/// running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkLayout {
    /// `struct task_struct`, `nsproxy`.
    pub task_nsproxy: u32,
    /// `struct nsproxy`, `net_ns`.
    pub nsproxy_net_ns: u32,
    /// `struct net`, `ipv4.tcp_death_row.hashinfo` (Linux 6.1).
    pub net_hashinfo: u32,
    /// `struct net`, `net_cookie`.
    pub net_cookie: u32,
    /// `struct inet_hashinfo`, `ehash`.
    pub hashinfo_ehash: u32,
    /// `struct inet_hashinfo`, `ehash_mask`.
    pub hashinfo_ehash_mask: u32,
    /// `struct inet_hashinfo`, `pernet`.
    pub hashinfo_pernet: u32,
    /// `struct sock`, `sk_socket`.
    pub sk_socket: u32,
    /// `struct sock`, `sk_uid`.
    pub sk_uid: u32,
    /// From a `struct socket` to its inode's `i_ino`: the socket sits in a
    /// `struct socket_alloc` next to its `vfs_inode`.
    pub socket_ino: u32,
    /// `struct inet_timewait_sock`, `tw_substate`: the state `ss` shows
    /// for a TIME_WAIT socket (FIN_WAIT2 for one that timed out there).
    pub tw_substate: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<WalkLayout>() == 48);

/// Offsets in `struct sock_common` the walk takes as constants, as it
/// does `sock_common`'s head: those of every 64-bit kernel with IPv6
/// since Linux 5.x. The loader checks them against BTF and leaves the walk
/// out where they differ.
pub mod sock_common {
    pub const SKC_RCV_SADDR: usize = 4;
    pub const SKC_STATE: usize = 18;
    pub const SKC_NET: usize = 48;
    pub const SKC_V6_DADDR: usize = 56;
    pub const SKC_V6_RCV_SADDR: usize = 72;
    pub const SKC_COOKIE: usize = 88;
    /// `skc_nulls_node`: the links of the hash chain.
    pub const SKC_NULLS_NODE: usize = 104;
    /// The bytes read at once: all of the above.
    pub const LEN: usize = 112;
}

/// `sizeof(struct inet_ehash_bucket)`: one `hlist_nulls_head`.
pub const BUCKET_SIZE: u32 = 8;
