//! Each unprivileged user's quota of the shared entries of `PORT_TABLES`,
//! `PORT_STATS` and `POOL_KEYS`, so that one user's namespaces cannot
//! crowd out another's (the host's and the host-owned ones have parts of
//! their own, in `maps`); and of the slots of `SOCKETS`, which every
//! namespace shares, so that one user's sockets cannot leave another's
//! unfollowed.
//!
//! A user is known by the kuid that made the outermost user namespace
//! under the host's (`layout::owner_uid`), read on the rare path where a
//! namespace first takes an entry. Entries are charged to the user when
//! taken and given back by the daemon, which subtracts them from the
//! user's counts through its mapping of `OWNER_HELD`. A charge is an
//! atomic add that is taken back when it went past the quota, so no user
//! ever holds more, however many CPUs race.
//!
//! A socket's slot is charged to the user its process acts for
//! (`layout::current_user`), root excepted (on the host's user namespace,
//! or in one root made), and given back by the program that frees the
//! slot.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap},
};
use portmon_common::{capacity, slot, OwnerHeld, OwnerQuota};

use crate::{
    counter_maps::{count_health, fetch_add, health_counter, xadd},
    layout,
};

#[map]
static OWNER_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(capacity::OWNERS, 0);

#[map]
static OWNER_HELD: Array<OwnerHeld> = Array::with_max_entries(capacity::OWNERS, BPF_F_MMAPABLE);

#[map]
pub static POOL_OWNERS: Array<u32> = Array::with_max_entries(capacity::POOLS, 0);

/// Set by the loader (see `global::OWNER_QUOTA`).
#[unsafe(no_mangle)]
static PORTMON_OWNER_QUOTA: OwnerQuota = OwnerQuota {
    tables: u32::MAX,
    blocks: u32::MAX,
    pools: u32::MAX,
    sockets: u32::MAX,
};

#[inline(always)]
fn quota() -> OwnerQuota {
    // SAFETY: a plain read of a static the loader sets; volatile so the
    // compiler keeps it.
    unsafe { core::ptr::read_volatile(&raw const PORTMON_OWNER_QUOTA) }
}

/// What is charged.
#[derive(Clone, Copy)]
pub enum Entry {
    Table,
    Block,
    Pool,
    Socket,
}

/// A user's entry of `OWNER_HELD`, plus one, as tables and pools record it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Owner(u32);

impl Owner {
    /// The user whose namespace the kernel socket at `sk` is in; users past
    /// the map's capacity, or whose user could not be read, share entry 0.
    #[inline(always)]
    pub fn of(sk: u64) -> Self {
        let slot = layout::owner_uid(sk).and_then(slot_of).unwrap_or(0);
        Self(slot + 1)
    }

    /// The user the current process acts for, to charge a slot of
    /// `SOCKETS` to; `None` for root, which no quota binds, whether on the
    /// host's user namespace or in one it made (a pod's, with user
    /// namespaces on), and for everyone when no quota is set (the loader's
    /// constant, so the verifier drops the rest).
    #[inline(always)]
    pub fn current() -> Option<Self> {
        if quota().sockets == u32::MAX {
            return None;
        }
        let kuid = layout::current_kuid();
        if kuid == 0 {
            return None;
        }
        let user = layout::current_user(kuid);
        if user == 0 {
            return None;
        }
        let slot = slot_of(user).unwrap_or(0);
        Some(Self(slot + 1))
    }

    /// As a table or pool recorded it; `None` for one never charged (0).
    #[inline(always)]
    pub fn recorded(value: u32) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    #[inline(always)]
    pub fn recorded_as(self) -> u32 {
        self.0
    }

    /// Charges one `entry`; `false`, counted, when the user's namespaces
    /// hold their quota of them already.
    #[inline(always)]
    pub fn charge(self, entry: Entry) -> bool {
        let Some((counter, quota)) = self.counter(entry) else {
            return false;
        };
        if fetch_add(counter) < u64::from(quota) {
            return true;
        }
        // SAFETY: a map value pointer, 8-byte aligned, valid for this run.
        unsafe { xadd(counter, u64::MAX) };
        count_health(slot::OWNER_QUOTA_REFUSED);
        false
    }

    /// Takes back a charge whose entry was not taken after all.
    #[inline(always)]
    pub fn refund(self, entry: Entry) {
        if let Some((counter, _)) = self.counter(entry) {
            // SAFETY: as above.
            unsafe { xadd(counter, u64::MAX) };
        }
    }

    #[inline(always)]
    fn counter(self, entry: Entry) -> Option<(*mut u64, u32)> {
        let held = OWNER_HELD.get_ptr_mut(self.0.wrapping_sub(1))?;
        let quota = quota();
        // SAFETY: field pointers into a map value, 8-byte aligned.
        Some(unsafe {
            match entry {
                Entry::Table => (&raw mut (*held).tables, quota.tables),
                Entry::Block => (&raw mut (*held).blocks, quota.blocks),
                Entry::Pool => (&raw mut (*held).pools, quota.pools),
                Entry::Socket => (&raw mut (*held).sockets, quota.sockets),
            }
        })
    }
}

/// The `OWNER_HELD` entry of user `uid`, given out now if it has none;
/// `None` once every entry is given out.
#[inline(always)]
fn slot_of(uid: u32) -> Option<u32> {
    if let Some(slot) = OWNER_SLOTS.get_ptr(uid) {
        // SAFETY: a map value pointer, valid for this run.
        return Some(unsafe { *slot });
    }
    let taken = health_counter(slot::OWNER_SLOTS_TAKEN)?;
    let slot = u32::try_from(fetch_add(taken)).ok()?.checked_add(1)?;
    if slot >= capacity::OWNERS {
        return None;
    }
    if OWNER_SLOTS.insert(uid, slot, u64::from(BPF_NOEXIST)).is_ok() {
        return Some(slot);
    }
    // Another CPU gave this user an entry first: `slot` stays unused.
    // SAFETY: as above.
    OWNER_SLOTS.get_ptr(uid).map(|slot| unsafe { *slot })
}
