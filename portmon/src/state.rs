//! The daemon's shared state, built once the programs are attached and
//! read by every reader above it: the exporter's collector, the JSON API,
//! reload and the watchdog. Nothing here calls up into them.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant, SystemTime},
};

use portmon_common::Owner;

use crate::{
    cgroups::CgroupPaths,
    exhaustion::{self, EphemeralReport},
    failures::{Failure, FailureKey, FailureLog, FailureLogHealth},
    inventory::{Inventory, Snapshot},
    kernel::bpf::{
        counters::{Health, PortCount},
        KernelMaps, MapUsage,
    },
    settings::Settings,
    workload::{RuntimeState, Workload},
};

/// How old the list of namespaces may be when a snapshot is taken.
const NAMESPACE_RESCAN: Duration = Duration::from_secs(2);

/// How the last attempt to load the configuration went, as Prometheus
/// reports its own (`*_config_last_reload_successful`,
/// `*_config_last_reload_success_timestamp_seconds`): the load at start
/// counts as the first success.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadStatus {
    /// Whether the last load (at start or on SIGHUP) was applied.
    pub last_successful: bool,
    /// When a load was last applied.
    pub last_success: SystemTime,
}

impl ReloadStatus {
    /// A configuration applied now.
    pub fn applied_now() -> Self {
        Self {
            last_successful: true,
            last_success: SystemTime::now(),
        }
    }
}

/// What the readers (exporter, API, reload, watchdog) share: the kernel
/// maps, the failure log, the inventory, cgroup names and the settings in
/// force. The daemon builds it once the programs are attached.
pub struct State {
    maps: Mutex<KernelMaps>,
    failures: Arc<Mutex<FailureLog>>,
    inventory: Mutex<(Inventory, Instant)>,
    cgroups: Mutex<CgroupPaths>,
    settings: RwLock<Arc<Settings>>,
    reload: Mutex<ReloadStatus>,
    /// The programs attached.
    pub programs: Vec<&'static str>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// The state of a daemon whose programs `programs` fill `maps`; pods
    /// named from the runtimes' state in `runtimes`.
    pub fn new(
        maps: KernelMaps,
        cgroup_root: PathBuf,
        runtimes: RuntimeState,
        settings: Settings,
        programs: Vec<&'static str>,
    ) -> Self {
        Self {
            maps: Mutex::new(maps),
            failures: Arc::default(),
            inventory: Mutex::new((Inventory::scan_with(runtimes), Instant::now())),
            cgroups: Mutex::new(CgroupPaths::new(cgroup_root)),
            settings: RwLock::new(Arc::new(settings)),
            reload: Mutex::new(ReloadStatus::applied_now()),
            programs,
        }
    }

    /// The failure log, for the reader that fills it.
    pub fn failure_log(&self) -> Arc<Mutex<FailureLog>> {
        self.failures.clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts new settings in force; scrapes under way finish with the old.
    pub fn replace_settings(&self, settings: Settings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
    }

    /// How the last load of the configuration went.
    pub fn reload_status(&self) -> ReloadStatus {
        *lock(&self.reload)
    }

    /// Records a reload: applied (now) or refused, the running settings kept.
    pub fn record_reload(&self, applied: bool) {
        let mut status = lock(&self.reload);
        if applied {
            *status = ReloadStatus::applied_now();
        } else {
            status.last_successful = false;
        }
    }

    /// Every port's counters.
    pub fn ports(&self) -> Vec<PortCount> {
        lock(&self.maps).ports()
    }

    /// portmon's own health counters.
    pub fn health(&self) -> Health {
        lock(&self.maps).health()
    }

    /// Who bound, listened on or connected each socket the kernel side
    /// follows, by cookie.
    pub fn owners(&self) -> HashMap<u64, Owner> {
        lock(&self.maps).owners()
    }

    /// The systemd units of the cgroups `ids`, for those whose path names one.
    pub fn units(&self, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
        let mut cgroups = lock(&self.cgroups);
        ids.into_iter()
            .filter_map(|id| cgroups.unit(id).map(|unit| (id, unit)))
            .collect()
    }

    /// TCP connects from sockets bound to port 0, by command.
    pub fn bind_before_connect(&self) -> Vec<(String, u64)> {
        lock(&self.maps).bind_before_connect()
    }

    /// How full each namespace's ephemeral pool is, as of `snapshot`.
    pub fn ephemeral(&self, snapshot: &Snapshot) -> EphemeralReport {
        let mut report = exhaustion::assess(
            &snapshot.sockets,
            &snapshot.pools,
            &lock(&self.maps).exclusive_sockets(),
            self.settings().ephemeral_destinations,
        );
        if !report.listeners.is_empty() {
            let owners = self.owners();
            let units = self.units(
                report
                    .listeners
                    .iter()
                    .filter_map(|l| Some(owners.get(&l.cookie)?.cgroup)),
            );
            for listener in &mut report.listeners {
                listener.owner = owners.get(&listener.cookie).map(|o| exhaustion::ListenerOwner {
                    pid: o.pid,
                    comm: crate::kernel::procfs::comm_text(&o.comm),
                    unit: units.get(&o.cgroup).cloned(),
                });
            }
        }
        report
    }

    /// Entries and capacity of each kernel map.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        lock(&self.maps).usage()
    }

    /// Failure counts since start.
    pub fn failure_counts(&self) -> BTreeMap<FailureKey, u64> {
        lock(&self.failures).counts().clone()
    }

    /// What the failure log could not keep as it came.
    pub fn failure_log_health(&self) -> FailureLogHealth {
        lock(&self.failures).health()
    }

    /// The most recent failures, newest first.
    pub fn recent_failures(&self, limit: usize) -> Vec<Failure> {
        lock(&self.failures).recent().rev().take(limit).cloned().collect()
    }

    /// Finds new namespaces and opens their sockets; lets gone ones go.
    pub fn rescan_namespaces(&self) {
        let mut guard = lock(&self.inventory);
        guard.0.rescan();
        guard.1 = Instant::now();
    }

    /// A fresh inventory of every namespace, and their names by cookie.
    pub fn snapshot(&self) -> (Snapshot, HashMap<u64, String>) {
        let (snapshot, namespaces) = self.snapshot_with_workloads();
        let names = namespaces
            .into_iter()
            .map(|(cookie, name, _)| (cookie, name))
            .collect();
        (snapshot, names)
    }

    /// A fresh inventory of every namespace, and each namespace's cookie,
    /// name and workload: those portmon could enter, and those it knows only
    /// from the kernel programs' records of their sockets (see
    /// [`State::recorded_namespaces`]).
    pub fn snapshot_with_workloads(&self) -> (Snapshot, Vec<(u64, String, Workload)>) {
        let mut guard = lock(&self.inventory);
        let (inventory, scanned) = &mut *guard;
        if scanned.elapsed() > NAMESPACE_RESCAN {
            inventory.rescan();
            *scanned = Instant::now();
        }
        let snapshot = inventory.snapshot();
        let mut namespaces: Vec<(u64, String, Workload)> = inventory
            .namespaces()
            .iter()
            .map(|n| (n.cookie, n.name.clone(), n.workload.clone()))
            .collect();
        drop(guard);
        let entered: HashMap<u64, ()> = namespaces.iter().map(|(c, _, _)| (*c, ())).collect();
        let mut taken: HashMap<String, ()> = namespaces.iter().map(|(_, n, _)| (n.clone(), ())).collect();
        for (cookie, name, workload) in self.recorded_namespaces() {
            if entered.contains_key(&cookie) {
                continue;
            }
            // Two namespaces may come from one unit; a name stays unique.
            let name = if taken.contains_key(&name) {
                format!("{name}/cookie:{cookie}")
            } else {
                name
            };
            taken.insert(name.clone(), ());
            namespaces.push((cookie, name, workload));
        }
        (snapshot, namespaces)
    }

    /// Namespaces named from the sockets the kernel programs recorded: the
    /// cgroup of a socket's owner, by its id, needs no privilege to read,
    /// where entering the namespace (setns) and even seeing it through
    /// `/proc/PID/ns/net` (ptrace access to its processes) do. So a
    /// namespace portmon cannot enter is still named by its workload once a
    /// process in it bound or connected. The owner with the lowest pid
    /// names it (a pod's sandbox before its containers).
    fn recorded_namespaces(&self) -> Vec<(u64, String, Workload)> {
        let mut first: HashMap<u64, (u32, u64)> = HashMap::new();
        for owner in self.owners().into_values() {
            let entry = first.entry(owner.netns).or_insert((owner.pid, owner.cgroup));
            if owner.pid < entry.0 {
                *entry = (owner.pid, owner.cgroup);
            }
        }
        let mut cgroups = lock(&self.cgroups);
        let mut found: Vec<(u64, String, Workload)> = first
            .into_iter()
            .filter_map(|(netns, (_, cgroup))| {
                let path = cgroups.path(cgroup)?.as_bytes().to_vec();
                let name = crate::cgroups::workload_name(&path)?;
                Some((netns, name, Workload::from_cgroup_path(&path)))
            })
            .collect();
        drop(cgroups);
        found.sort_unstable_by_key(|(cookie, _, _)| *cookie);
        let mut inventory = lock(&self.inventory);
        for (_, _, workload) in &mut found {
            inventory.0.complete_workload(workload);
        }
        found
    }
}
