//! The counters' tables: per-port blocks and the tables that index them,
//! the pools of ports the kernel chose, and what each unprivileged user's
//! namespaces hold of the shared entries.

use crate::range_class;

/// Ports per `PORT_STATS` block. Connects from one host to one destination
/// take neighbouring ephemeral ports (`__inet_hash_connect` steps through
/// the range), so a block keeps them on a few cache lines.
pub const PORTS_PER_BLOCK: usize = 64;
/// Blocks that cover every port: the length of a `PortTable`.
pub const BLOCKS_PER_TABLE: usize = 65_536 / PORTS_PER_BLOCK;

/// Key of `PORT_TABLES`: one protocol and family in one network namespace,
/// and what is counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortTableKey {
    /// Network namespace cookie (`bpf_get_netns_cookie`).
    pub netns: u64,
    /// `proto::*`.
    pub proto: u8,
    /// `family::*`.
    pub family: u8,
    /// `kind::*`.
    pub kind: u8,
    // Two fields, not `[u8; 5]`: LLVM builds a zeroed five-byte array with a
    // call to the BPF object's `memset` on every count.
    pub _pad: u8,
    pub _pad_word: u32,
}
const _: () = assert!(core::mem::size_of::<PortTableKey>() == 16);

impl PortTableKey {
    pub const fn new(netns: u64, proto: u8, family: u8, kind: u8) -> Self {
        Self {
            netns,
            proto,
            family,
            kind,
            _pad: 0,
            _pad_word: 0,
        }
    }
}

/// Entry of `PORT_TABLES`: for each block of `PORTS_PER_BLOCK` ports (port
/// / `PORTS_PER_BLOCK`), its index in `PORT_STATS`, 0 if none yet.
///
/// A count finds its table through a per-CPU cache of the last table used
/// for each kind, checked against the table's own key, and then goes
/// straight to the block: no hash lookup on the hot path. A hash lookup
/// per count costs more than the rest of a program's work, the most on
/// ports picked at random (bind(0), UDP), whose buckets are out of the
/// cache (figures in docs/performance.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortTable {
    /// Whose table this is; all zero for an entry not handed out, or lost
    /// to a race between two CPUs.
    pub key: PortTableKey,
    pub blocks: [u32; BLOCKS_PER_TABLE],
    /// Blocks this table took (checked against the quota when it takes one).
    pub held: u64,
    /// Counts of ports whose block the table could not take (over its
    /// quota, or `PORT_STATS` full), by `range_class`: totals stay exact.
    pub overflow: [u64; range_class::COUNT],
    /// The `OWNER_HELD` entry charged for this table and its blocks, plus
    /// one; 0 for a namespace the host's user namespace owns, never charged.
    pub owner: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PortTable>() == 16 + 4096 + 8 + 24 + 8);

/// Value of `PORT_STATS`: one counter per port of the block. Counters only grow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBlock {
    pub counts: [u64; PORTS_PER_BLOCK],
}
const _: () = assert!(core::mem::size_of::<PortBlock>() == 512);

/// Key of `POOL_KEYS`: one namespace's pool of one protocol and family,
/// and how its ports were handed out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Network namespace cookie.
    pub netns: u64,
    /// `proto::*`.
    pub proto: u8,
    /// `family::*`.
    pub family: u8,
    /// `assigned::*`.
    pub how: u8,
    // Two fields, not `[u8; 5]`: LLVM builds a zeroed five-byte array with a
    // call to the BPF object's `memset` on every count.
    pub _pad: u8,
    pub _pad_word: u32,
}
const _: () = assert!(core::mem::size_of::<PoolKey>() == 16);

impl PoolKey {
    pub const fn new(netns: u64, proto: u8, family: u8, how: u8) -> Self {
        Self {
            netns,
            proto,
            family,
            how,
            _pad: 0,
            _pad_word: 0,
        }
    }
}

/// Value of `OWNER_HELD`: the shared entries the namespaces of one
/// unprivileged user hold, and the `SOCKETS` slots its processes hold,
/// checked against `OwnerQuota` when they take one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerHeld {
    pub tables: u64,
    pub blocks: u64,
    pub pools: u64,
    /// Charged and given back by the kernel programs alone, as the slot is
    /// claimed and freed.
    pub sockets: u64,
}
const _: () = assert!(core::mem::size_of::<OwnerHeld>() == 32);

/// Byte offsets of `OwnerHeld`'s counters, for the daemon's atomic
/// subtraction through the mapped array when it gives entries back.
pub mod owner_held {
    pub const TABLES: usize = 0;
    pub const BLOCKS: usize = 8;
    pub const POOLS: usize = 16;
    pub const SOCKETS: usize = 24;
}

/// The most shared entries the namespaces of one unprivileged user may
/// hold, and the most `SOCKETS` slots its processes may (`global::OWNER_QUOTA`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerQuota {
    pub tables: u32,
    pub blocks: u32,
    pub pools: u32,
    pub sockets: u32,
}
const _: () = assert!(core::mem::size_of::<OwnerQuota>() == 16);
