//! The kernel maps user space reads, as one bundle: what the daemon's
//! state holds and the integration tests read, through the same methods.

use std::collections::{HashMap, HashSet};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use portmon_common::{capacity, map, Owner};

use super::{
    attached::AttachedCheck,
    connect_search::{ConnectSearch, SearchTimes},
    counters::{self, Health, PortCount, PortCounters},
    map_batch::read_all,
    pools::{AssignedCount, PoolCounters},
    program_stats::{ProgramIds, ProgramRuns},
    socket_table::{Followed, SocketTable},
};
use crate::kernel::procfs;

/// Handles on the kernel maps the readers use.
pub struct KernelMaps {
    /// The kernel's ids of the programs, for their run statistics.
    pub programs: ProgramIds,
    /// Asks the kernel which programs run at the cgroup now.
    pub attached: AttachedCheck,
    /// Per-port counters, in blocks of 64 ports.
    pub ports: PortCounters,
    /// The sockets the programs follow, with their owners and ports.
    pub sockets: SocketTable,
    /// Ports the kernel chose, counted per pool.
    pub pools: PoolCounters,
    /// TCP connects from sockets bound to port 0, by command name.
    pub bind_before_connect: BpfHashMap<MapData, [u8; 16], u64>,
    /// portmon's own health counters.
    pub health: Array<MapData, u64>,
    /// How long TCP connects spent finding a port, per namespace (empty
    /// unless `connect-search` is on).
    pub connect_search: ConnectSearch,
    /// The sizes `PORT_STATS` and `PORT_TABLES` were made with (the kernel
    /// side keeps one entry of each out of use).
    pub capacities: Capacities,
}

/// Entries of the maps whose use the kernel side counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    pub port_stats: u32,
    pub port_tables: u32,
    pub pools: u32,
}

/// Entries in use and capacity of one kernel map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps")
            .field("capacities", &self.capacities)
            .finish_non_exhaustive()
    }
}

impl KernelMaps {
    /// Every port's counters.
    pub fn ports(&self) -> Vec<PortCount> {
        counters::read_ports(&self.ports, &self.sockets.read())
    }

    /// Ports the kernel handed out from each pool, by way.
    pub fn assigned(&self) -> Vec<AssignedCount> {
        self.pools.read(self.health().pools_taken)
    }

    /// Each program's runs and run time, while the kernel counts them.
    pub fn program_runs(&self) -> Option<Vec<ProgramRuns>> {
        self.programs.read()
    }

    /// How long TCP connects spent finding a local port, per namespace.
    pub fn connect_search(&self) -> Vec<SearchTimes> {
        self.connect_search.read()
    }

    /// portmon's own health counters.
    pub fn health(&self) -> Health {
        counters::read_health(&self.health)
    }

    /// Every socket followed now.
    pub fn followed(&self) -> Vec<Followed> {
        self.sockets.read()
    }

    /// Who bound, listened on or connected each followed socket, by cookie.
    pub fn owners(&self) -> HashMap<u64, Owner> {
        self.sockets.owners()
    }

    /// TCP connects from sockets bound to port 0, by command.
    pub fn bind_before_connect(&self) -> Vec<(String, u64)> {
        read_all(&self.bind_before_connect)
            .into_iter()
            .map(|(comm, n)| (procfs::comm_text(&comm), n))
            .collect()
    }

    /// Cookies of the sockets that hold their port by bind() or listen().
    pub fn exclusive_sockets(&self) -> HashSet<u64, foldhash::fast::FixedState> {
        self.sockets
            .read()
            .into_iter()
            .filter(Followed::holds_exclusively)
            .map(|f| f.cookie)
            .collect()
    }

    /// Entries and capacity of each map that can fill up.
    pub fn usage(&self) -> Vec<MapUsage> {
        let o = self.capacities;
        let health = self.health();
        vec![
            // The kernel's own count of entries handed out: every one taken,
            // in use or lost to a race, stops the map short of its capacity.
            MapUsage {
                name: map::PORT_STATS,
                entries: health.port_blocks_taken.min(o.port_stats.into()),
                capacity: o.port_stats.into(),
            },
            MapUsage {
                name: map::PORT_TABLES,
                entries: health.port_tables_taken.min(o.port_tables.into()),
                capacity: o.port_tables.into(),
            },
            MapUsage {
                name: map::POOL_KEYS,
                entries: health.pools_taken.min(o.pools.into()),
                capacity: o.pools.into(),
            },
            MapUsage {
                name: map::SOCKETS,
                entries: self.sockets.read().len() as u64,
                capacity: self.sockets.capacity().into(),
            },
            MapUsage {
                name: map::BIND_BEFORE_CONNECT,
                entries: read_all(&self.bind_before_connect).len() as u64,
                capacity: capacity::BIND_BEFORE_CONNECT.into(),
            },
            MapUsage {
                name: map::CONNECT_SEARCH,
                entries: self.connect_search.namespaces(),
                capacity: capacity::CONNECT_SEARCH_NAMESPACES.into(),
            },
        ]
    }
}
