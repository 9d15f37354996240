//! How `PORT_TABLES`, `PORT_STATS` and `POOL_KEYS` are split between the
//! namespaces: the host's own entries, the entries every namespace shares,
//! and a reserve only namespaces the host's user namespace owns take from.
//!
//! An unprivileged user can make network namespaces without limit, inside
//! a user namespace of its own, and fill every shared entry with them. A
//! pod's or a root container's namespace is made with `CAP_SYS_ADMIN` on
//! the host, so the host's user namespace owns it: the kernel programs read
//! the owner when they first claim an entry for a namespace, and take such
//! a namespace's from the reserve first. The entries of each part go back
//! to that part's free queue.
//!
//! Within the shared part, each unprivileged user's namespaces hold at
//! most a quota (`max-shared-percent-per-user` of it), so that one user
//! cannot crowd out another's either; the user is the one who made the
//! outermost user namespace under the host's (kernel side: `owner_quota`).
//! The same quota bounds the slots of `SOCKETS` one user's processes hold,
//! wherever their sockets are.

use portmon_common::{capacity, OwnerQuota};

/// The last entry of each part, as the loader gives them to the programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The last shared `PORT_TABLES` entry; the reserve follows to the end.
    pub shared_tables: u32,
    /// The last shared `PORT_STATS` entry.
    pub shared_blocks: u32,
    /// The last `PORT_STATS` entry of the reserve; the host's own follow.
    pub reserved_blocks: u32,
    /// The last shared `POOL_KEYS` entry; the reserve follows to the end.
    pub shared_pools: u32,
}

/// Which free queue an entry goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Shared,
    Reserved,
    /// The host's own: never given back.
    Host,
}

impl Split {
    /// The split of `port_stats` blocks, `port_tables` tables and `pools`
    /// pools (the host's own entries not included): the reserve is
    /// `capacity::reserved_part` of each.
    pub fn new(port_stats: u32, port_tables: u32, pools: u32) -> Self {
        let shared = |n: u32| n - capacity::reserved_part(n);
        Self {
            shared_tables: capacity::HOST_ENTRIES + shared(port_tables),
            shared_blocks: shared(port_stats),
            reserved_blocks: port_stats,
            shared_pools: capacity::HOST_ENTRIES + shared(pools),
        }
    }

    /// The most shared entries of each map one unprivileged user's
    /// namespaces may hold: `percent` of the shared part, at least one;
    /// and `percent` of the `sockets` slots of `SOCKETS` that hold
    /// sockets, which every namespace shares. At 100 percent no user's
    /// slots are charged (`u32::MAX`): a user could hold all of them
    /// anyway, and the claim skips the helper call that finds the user.
    pub fn owner_quota(&self, percent: u32, sockets: u32) -> OwnerQuota {
        let share = |entries: u32| {
            let entries = u64::from(entries);
            u32::try_from(entries * u64::from(percent.min(100)) / 100).map_or(u32::MAX, |n| n.max(1))
        };
        OwnerQuota {
            tables: share(self.shared_tables - capacity::HOST_ENTRIES),
            blocks: share(self.shared_blocks),
            pools: share(self.shared_pools - capacity::HOST_ENTRIES),
            sockets: if percent >= 100 { u32::MAX } else { share(sockets) },
        }
    }

    /// The part table `entry` belongs to.
    pub fn table(&self, entry: u32) -> Part {
        match entry {
            0..=capacity::HOST_ENTRIES => Part::Host,
            e if e <= self.shared_tables => Part::Shared,
            _ => Part::Reserved,
        }
    }

    /// The part block `index` belongs to.
    pub fn block(&self, index: u32) -> Part {
        match index {
            i if i <= self.shared_blocks => Part::Shared,
            i if i <= self.reserved_blocks => Part::Reserved,
            _ => Part::Host,
        }
    }

    /// The part pool `entry` belongs to.
    pub fn pool(&self, entry: u32) -> Part {
        match entry {
            0..=capacity::HOST_ENTRIES => Part::Host,
            e if e <= self.shared_pools => Part::Shared,
            _ => Part::Reserved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_in_one_part_and_the_reserve_is_half_of_the_rest() {
        let split = Split::new(4096, 512, 4096);
        let host = capacity::HOST_ENTRIES;
        assert_eq!(split.table(host), Part::Host);
        assert_eq!(split.table(host + 1), Part::Shared);
        assert_eq!(split.table(host + 256), Part::Shared);
        assert_eq!(split.table(host + 257), Part::Reserved);
        assert_eq!(split.block(1), Part::Shared);
        assert_eq!(split.block(2048), Part::Shared);
        assert_eq!(split.block(2049), Part::Reserved);
        assert_eq!(split.block(4096), Part::Reserved);
        assert_eq!(split.block(4097), Part::Host);
        assert_eq!(split.pool(host + 2048), Part::Shared);
        assert_eq!(split.pool(host + 2049), Part::Reserved);
    }

    #[test]
    fn a_users_quota_is_its_percent_of_each_shared_part_and_never_none() {
        let split = Split::new(4096, 512, 4096);
        let quota = split.owner_quota(25, 57_344);
        assert_eq!(
            (quota.tables, quota.blocks, quota.pools, quota.sockets),
            (64, 512, 512, 14_336)
        );
        let whole = split.owner_quota(100, 57_344);
        assert_eq!(
            (whole.tables, whole.blocks, whole.pools, whole.sockets),
            (256, 2048, 2048, u32::MAX)
        );
        assert_eq!(split.owner_quota(250, 57_344), whole);
        let tiny = Split::new(1, 1, 1).owner_quota(1, 7);
        assert_eq!((tiny.tables, tiny.blocks, tiny.pools, tiny.sockets), (1, 1, 1, 1));
    }

    #[test]
    fn an_odd_or_tiny_capacity_keeps_the_larger_half_shared() {
        let split = Split::new(1, 1, 3);
        assert_eq!(split.shared_blocks, 1);
        assert_eq!(split.reserved_blocks, 1);
        assert_eq!(split.block(2), Part::Host);
        assert_eq!(split.shared_tables, capacity::HOST_ENTRIES + 1);
        assert_eq!(split.shared_pools, capacity::HOST_ENTRIES + 2);
    }
}
