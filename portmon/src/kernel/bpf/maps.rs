//! The kernel maps user space reads, as one bundle: what the daemon's
//! state holds and the integration tests read, through the same methods.

use super::walk::EhashWalk;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use portmon_common::{capacity, kind, map, Family, Owner, PortStats, Proto, Role};

use super::{
    attached::AttachedCheck,
    connect_search::{ConnectSearch, SearchTimes},
    counters::{self, Health, PortCount, PortCounters, PortOverflow},
    map_batch::read_all,
    pools::{AssignedCount, PoolCounters},
    program_stats::ProgramIds,
    reclaim::{FinalCounts, Reclaim},
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
    /// Cookie of the daemon's own namespace, never reclaimed.
    pub host_netns: u64,
    /// Gives back the entries of namespaces that are gone.
    pub reclaim: Reclaim,
    /// Final counts of namespaces whose entries were given back, until
    /// their grace period ends.
    pub(super) retired: Retired,
    /// The walk of the host's established-socket table, where this kernel
    /// has what it needs (the inventory takes it).
    pub walk: Option<EhashWalk>,
}

/// Final counts of namespaces whose entries were given back, by cookie:
/// (given back at, name, counts).
#[derive(Debug, Default)]
pub struct Retired(HashMap<u64, (Instant, Option<String>, FinalCounts)>);

/// Entries of the maps whose use the kernel side counts, the host's
/// entries included.
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
    /// Every port's counters, those of namespaces given back within their
    /// grace period included (added to any new counts of the same cookie).
    pub fn ports(&self) -> Vec<PortCount> {
        let mut ports = counters::read_ports(
            &self.ports,
            &self.reclaim.quarantined_tables(),
            &self.sockets.read(),
        );
        if self.retired.0.is_empty() {
            return ports;
        }
        let mut by_key: BTreeMap<(u64, Proto, Family, Role, u16), PortStats> = ports
            .drain(..)
            .map(|p| ((p.netns, p.proto, p.family, p.role, p.port), p.stats))
            .collect();
        for (_, _, counts) in self.retired.0.values() {
            for &(key, port, n) in &counts.ports {
                let Some(grouped) = counters::port_key(&key, port) else {
                    continue;
                };
                let stats = by_key.entry(grouped).or_default();
                match key.kind {
                    kind::BINDS => stats.binds += n,
                    kind::LISTENS => stats.listens += n,
                    _ => stats.connects += n,
                }
            }
        }
        by_key
            .into_iter()
            .map(|(key, stats)| PortCount::from_key(key, stats))
            .collect()
    }

    /// Counts of ports that found no block, by namespace, table and range
    /// class; given-back namespaces' within their grace period included.
    pub fn overflow(&self) -> Vec<PortOverflow> {
        let mut out = counters::read_overflow(&self.ports, &self.reclaim.quarantined_tables());
        out.extend(
            self.retired
                .0
                .values()
                .flat_map(|(_, _, c)| c.overflow.iter().copied()),
        );
        out
    }

    /// Ports the kernel handed out from each pool, by way; given-back
    /// namespaces' within their grace period included.
    pub fn assigned(&self) -> Vec<AssignedCount> {
        let mut out = self.pools.read(&self.health(), &self.reclaim.quarantined_pools());
        out.extend(
            self.retired
                .0
                .values()
                .flat_map(|(_, _, c)| c.assigned.iter().copied()),
        );
        out
    }

    /// Cookies of the namespaces that hold kernel entries now.
    pub fn counted_namespaces(&self) -> HashSet<u64> {
        let mut found: HashSet<u64> = self.ports.tables().map(|(_, key)| key.netns).collect();
        found.extend(self.pools.read(&self.health(), &[]).into_iter().map(|a| a.netns));
        found
    }

    /// Unlinks the entries of the namespaces in `gone` (the host's never),
    /// and gives back those whose quarantine is over, keeping their final
    /// counts under the names `names` gives them.
    pub fn reclaim(&mut self, gone: &HashSet<u64>, names: &HashMap<u64, String>) {
        let host = self.host_netns;
        let handed_out: Vec<u32> = self.pools.handed_out(&self.health()).collect();
        self.reclaim
            .retire(&self.ports, &mut self.pools.keys, &handed_out, |netns| {
                netns != host && gone.contains(&netns)
            });
        let finals = self.reclaim.release(&self.ports, &mut self.pools.counts);
        let now = Instant::now();
        let mut by_netns: HashMap<u64, FinalCounts> = HashMap::new();
        for p in finals.ports {
            by_netns.entry(p.0.netns).or_default().ports.push(p);
        }
        for o in finals.overflow {
            by_netns.entry(o.netns).or_default().overflow.push(o);
        }
        for a in finals.assigned {
            by_netns.entry(a.netns).or_default().assigned.push(a);
        }
        for (netns, counts) in by_netns {
            let entry = self
                .retired
                .0
                .entry(netns)
                .or_insert_with(|| (now, names.get(&netns).cloned(), FinalCounts::default()));
            entry.0 = now;
            entry.2.add(counts);
        }
    }

    /// Drops the final counts (and connect-search histogram) of namespaces
    /// given back more than `grace` ago and holding no entries again;
    /// returns their cookies. One that
    /// counts again (alive after all, out of the scan's sight: held by a
    /// descriptor, or a thread's own) keeps its final counts, which its
    /// new ones add to: its counters never go back.
    pub fn drop_retired(&mut self, grace: Duration) -> Vec<u64> {
        let mut counting = self.counted_namespaces();
        counting.extend(self.reclaim.quarantined_tables().iter().map(|(_, key)| key.netns));
        counting.extend(self.reclaim.quarantined_pools().iter().map(|(_, key)| key.netns));
        let over: Vec<u64> = self
            .retired
            .0
            .iter()
            .filter(|(netns, (at, _, _))| at.elapsed() >= grace && !counting.contains(netns))
            .map(|(netns, _)| *netns)
            .collect();
        for netns in &over {
            self.retired.0.remove(netns);
            // Its connect-search histogram goes with its final counts.
            if let Err(err) = self.connect_search.forget(*netns) {
                tracing::debug!(netns, %err, "cannot drop a gone namespace's connect-search histogram");
            }
        }
        over
    }

    /// Whether entries of gone namespaces wait in quarantine.
    pub fn quarantined(&self) -> bool {
        !self.reclaim.quarantined_tables().is_empty() || !self.reclaim.quarantined_pools().is_empty()
    }

    /// Names of the namespaces given back within their grace period, as
    /// they were known when they went.
    pub fn retired_names(&self) -> Vec<(u64, String)> {
        self.retired
            .0
            .iter()
            .filter_map(|(netns, (_, name, _))| Some((*netns, name.clone()?)))
            .collect()
    }

    /// Tables in use and blocks they hold, quarantined ones included.
    pub fn tables_in_use(&self) -> (u64, u64) {
        let (tables, blocks) = self.ports.in_use();
        let quarantined = self.reclaim.quarantined_tables();
        let held: u64 = quarantined
            .iter()
            .map(|(entry, _)| self.ports.blocks_of(*entry).count() as u64)
            .sum();
        (tables + quarantined.len() as u64, blocks + held)
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

    /// The namespaces of the sockets followed now: alive, whatever a scan
    /// of processes and mounts finds, since an open socket holds its
    /// namespace.
    pub fn namespaces_with_sockets(&self) -> HashSet<u64> {
        self.sockets.read().into_iter().map(|f| f.slot.netns).collect()
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
        // Entries in use, read from the entries themselves: those given
        // back are free again, whatever the kernel's count of new ones.
        let (tables, blocks) = self.tables_in_use();
        let pools = self.pools.in_use(&health) + self.reclaim.quarantined_pools().len() as u64;
        vec![
            MapUsage {
                name: map::PORT_STATS,
                entries: blocks.min(o.port_stats.into()),
                capacity: o.port_stats.into(),
            },
            MapUsage {
                name: map::PORT_TABLES,
                entries: tables.min(o.port_tables.into()),
                capacity: o.port_tables.into(),
            },
            MapUsage {
                name: map::POOL_KEYS,
                entries: pools.min(o.pools.into()),
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
