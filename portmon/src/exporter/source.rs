//! What a scrape reads, and where from: the daemon's kernel maps, failure
//! log and a fresh inventory, read when Prometheus asks and not before.

use std::collections::{BTreeMap, HashMap};

use portmon_common::{Family, Proto};

use super::{MapUsage, NetnsLabel};
use crate::{
    exhaustion::EphemeralReport,
    failures::{FailureKey, FailureLogHealth},
    kernel::{
        bpf::{
            connect_search::SearchTimes,
            counters::{Health, PortCount, PortOverflow},
            pools::AssignedCount,
            program_stats::{ProgramMisses, ProgramRuns},
        },
        sock_diag::NsSocket,
        threads,
    },
    registry::Registry,
    state::{ReloadStatus, State},
    workload::Workload,
};

/// Everything one scrape reads.
#[derive(Debug)]
pub struct ScrapeInput<'a> {
    pub ports: &'a [PortCount],
    /// Counts of ports that found no block, by namespace and range class.
    pub overflow: &'a [PortOverflow],
    /// Ports the kernel chose, per pool and way.
    pub assigned: &'a [AssignedCount],
    pub failures: &'a BTreeMap<FailureKey, u64>,
    pub sockets: &'a [NsSocket],
    pub registry: &'a Registry,
    /// Namespace cookie → the name people know it by.
    pub netns_names: &'a HashMap<u64, String>,
    pub health: Health,
    pub maps: &'a [MapUsage],
    pub programs: &'a [&'static str],
    /// Each program's runs and run time; `None` while the kernel does not
    /// count them (`kernel.bpf_stats_enabled`).
    pub program_runs: Option<&'a [ProgramRuns]>,
    /// Each program's runs the kernel skipped (none before Linux 5.12).
    pub program_misses: &'a [ProgramMisses],
    pub port_series_limit: usize,
    pub netns_label: NetnsLabel,
    /// Ephemeral pools, by the kernel's rules.
    pub ephemeral: &'a EphemeralReport,
    /// How long assessing the pools took (socket table read included).
    pub ephemeral_seconds: f64,
    /// How long TCP connects spent finding a port, per namespace (none
    /// unless `connect-search` is on).
    pub connect_search: &'a [SearchTimes],
    /// Searches not counted because their namespace found no room.
    pub connect_search_overflow: u64,
    /// Connects from sockets bound to port 0 first, by command.
    pub bind_before_connect: &'a [(String, u64)],
    /// sock_diag dumps that failed after every attempt, since start.
    pub inventory_errors: &'a BTreeMap<(Proto, Family), u64>,
    /// How the last load of the configuration went.
    pub reload: ReloadStatus,
    /// What the failure log could not keep as it came.
    pub failure_log: FailureLogHealth,
    /// Namespaces left out of the inventory for want of file descriptors.
    pub netns_unwatched: usize,
    /// Namespace scans the host cut short, since start.
    pub netns_scan_errors: u64,
    /// Whether the last snapshot walked the established-socket table, and
    /// the walks that failed since start.
    pub walk: (bool, u64),
    /// What runs in each namespace known, by its name.
    pub workloads: &'a [(String, Workload)],
    /// Inventory snapshots taken since start; concurrent requests share one.
    pub snapshots: u64,
    /// Walks of `/proc` for socket owners since start, and those cut short.
    pub owner_walks: (u64, u64),
}

/// Where a collector reads its numbers from at each scrape.
pub trait ScrapeSource: Send + Sync + 'static {
    /// Reads everything a scrape exports now and hands it to `build`.
    fn scrape<R>(&self, build: impl FnOnce(&ScrapeInput<'_>) -> R) -> R;
}

impl ScrapeSource for State {
    fn scrape<R>(&self, build: impl FnOnce(&ScrapeInput<'_>) -> R) -> R {
        // The sock_diag dumps take most of a scrape, on every core: the
        // kernel maps are read beside them.
        let read_maps = || {
            (
                (self.ports(), self.port_overflow()),
                self.assigned(),
                self.failure_counts(),
                self.bind_before_connect(),
                self.map_usage(),
                self.connect_search(),
            )
        };
        let (
            (
                (ports, overflow),
                assigned,
                failures,
                bind_before_connect,
                maps,
                (connect_search, connect_search_overflow),
            ),
            inventoried,
        ) = std::thread::scope(|scope| {
            let kernel = threads::spawn_scoped(scope, "portmon-maps", read_maps);
            let inventory = self.snapshot();
            // Without a thread of its own, the map read follows the dumps.
            let kernel = kernel.map_or_else(read_maps, |kernel| {
                kernel
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            (kernel, inventory)
        });
        let assessing = std::time::Instant::now();
        let ephemeral = self.ephemeral(&inventoried.snapshot);
        let ephemeral_seconds = assessing.elapsed().as_secs_f64();
        let settings = self.settings();
        let programs = self.program_stats();
        let attached = self.attached_now();
        build(&ScrapeInput {
            ports: &ports,
            overflow: &overflow,
            assigned: &assigned,
            failures: &failures,
            sockets: &inventoried.snapshot.sockets,
            registry: &settings.registry,
            netns_names: &inventoried.names,
            health: self.health(),
            maps: &maps,
            programs: &attached,
            program_runs: programs.runs.as_deref(),
            program_misses: &programs.misses,
            port_series_limit: settings.port_series_limit,
            netns_label: settings.netns_label,
            ephemeral: &ephemeral,
            ephemeral_seconds,
            bind_before_connect: &bind_before_connect,
            connect_search: &connect_search,
            connect_search_overflow,
            inventory_errors: &inventoried.snapshot.dump_errors,
            snapshots: self.snapshots_taken(),
            owner_walks: self.owner_walks(),
            reload: self.reload_status(),
            failure_log: self.failure_log_health(),
            netns_unwatched: inventoried.snapshot.unwatched_namespaces,
            netns_scan_errors: inventoried.snapshot.namespace_scan_errors,
            walk: (inventoried.snapshot.walked, inventoried.snapshot.walk_errors),
            workloads: &inventoried.workloads,
        })
    }
}
