//! The daemon's shared state, built once the programs are attached and
//! read by every reader above it: the exporter's collector, the JSON API,
//! reload and the watchdog. Nothing here calls up into them.

use std::{
    collections::{BTreeMap, HashMap},
    ops::{Deref, DerefMut},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
    time::{Duration, Instant, SystemTime},
};

use portmon_common::Owner;

use crate::{
    cgroups::CgroupPaths,
    exhaustion::{self, EphemeralReport},
    failures::{Failure, FailureKey, FailureLog, FailureLogHealth},
    inventory::{Inventory, Snapshot},
    kernel::bpf::{
        connect_search::SearchTimes,
        counters::{Health, PortCount, PortOverflow},
        pools::AssignedCount,
        program_stats::ProgramStats,
        KernelMaps, MapUsage,
    },
    kernel::sock_diag::NsSocket,
    owners::FoundOwners,
    settings::Settings,
    single_flight::SingleFlight,
    workload::{RuntimeState, Workload},
};

/// How old the list of namespaces may be when a snapshot is taken.
const NAMESPACE_RESCAN: Duration = Duration::from_secs(2);
/// A kernel map read (under the maps' lock) that runs longer is wedged.
const MAPS_STUCK: Duration = Duration::from_secs(5);
/// An inventory (sock_diag dumps of every namespace) that runs longer is
/// wedged: a host with a million sockets dumps them in a few seconds.
const INVENTORY_STUCK: Duration = Duration::from_secs(30);
/// A source with no read finished for longer is not being read: the
/// daemon's reconciler reads both every few seconds, scrapes or not.
const STALE: Duration = Duration::from_secs(60);

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

/// An inventory with the names of its namespaces by cookie, shared by
/// every request that asked while it was taken.
#[derive(Debug)]
pub struct Inventoried {
    pub snapshot: Snapshot,
    pub names: HashMap<u64, String>,
    /// What runs in each namespace, by its name.
    pub workloads: Vec<(String, Workload)>,
}

/// Why `/healthz` and the watchdog say the daemon is not well.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("no kernel program is attached")]
    NoPrograms,
    #[error("a read of the {what} has run for {seconds} s")]
    Stuck { what: &'static str, seconds: u64 },
    #[error("no read of the {what} has finished for {seconds} s")]
    Stale { what: &'static str, seconds: u64 },
}

/// When a read of one source started (if one runs) and when one last
/// finished, in milliseconds since the state's epoch plus one (0: never).
/// Atomics, so that the health check reads them without a lock a read holds.
#[derive(Debug, Default)]
struct Timing {
    busy_since: AtomicU64,
    last_done: AtomicU64,
}

impl Timing {
    fn check(&self, epoch: Instant, what: &'static str, stuck: Duration) -> Result<(), Unhealthy> {
        let now = millis(epoch);
        let busy = self.busy_since.load(Ordering::Relaxed);
        if busy != 0 && now.saturating_sub(busy) > stuck.as_millis() as u64 {
            return Err(Unhealthy::Stuck {
                what,
                seconds: now.saturating_sub(busy) / 1000,
            });
        }
        let done = self.last_done.load(Ordering::Relaxed);
        let since = now.saturating_sub(if done == 0 { 1 } else { done });
        // A read running now counts as fresh: it is not stuck (above).
        if busy == 0 && since > STALE.as_millis() as u64 {
            return Err(Unhealthy::Stale {
                what,
                seconds: since / 1000,
            });
        }
        Ok(())
    }
}

fn millis(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64 + 1
}

/// A lock held on one source, timed from taking it to letting it go.
struct Timed<'a, T> {
    guard: MutexGuard<'a, T>,
    timing: &'a Timing,
    epoch: Instant,
}

impl<'a, T> Timed<'a, T> {
    fn lock(m: &'a Mutex<T>, timing: &'a Timing, epoch: Instant) -> Self {
        let guard = lock(m);
        timing.busy_since.store(millis(epoch), Ordering::Relaxed);
        Self { guard, timing, epoch }
    }
}

impl<T> Drop for Timed<'_, T> {
    fn drop(&mut self) {
        self.timing.last_done.store(millis(self.epoch), Ordering::Relaxed);
        self.timing.busy_since.store(0, Ordering::Relaxed);
    }
}

impl<T> Deref for Timed<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for Timed<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
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
    found_owners: Mutex<FoundOwners>,
    /// Namespaces holding kernel entries at the last reclaim, to tell a
    /// host whose namespaces come and go from one whose stay.
    last_counted: Mutex<std::collections::HashSet<u64>>,
    settings: RwLock<Arc<Settings>>,
    reload: Mutex<ReloadStatus>,
    snapshots: SingleFlight<Inventoried>,
    snapshots_taken: AtomicU64,
    epoch: Instant,
    maps_timing: Timing,
    inventory_timing: Timing,
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
        let mut maps = maps;
        let mut inventory = Inventory::scan_with(runtimes);
        if let Some(walk) = maps.walk.take() {
            inventory.use_walk(walk);
        }
        Self {
            maps: Mutex::new(maps),
            failures: Arc::default(),
            inventory: Mutex::new((inventory, Instant::now())),
            cgroups: Mutex::new(CgroupPaths::new(cgroup_root)),
            found_owners: Mutex::default(),
            last_counted: Mutex::default(),
            settings: RwLock::new(Arc::new(settings)),
            reload: Mutex::new(ReloadStatus::applied_now()),
            snapshots: SingleFlight::default(),
            snapshots_taken: AtomicU64::new(0),
            epoch: Instant::now(),
            maps_timing: Timing::default(),
            inventory_timing: Timing::default(),
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

    fn maps(&self) -> Timed<'_, KernelMaps> {
        Timed::lock(&self.maps, &self.maps_timing, self.epoch)
    }

    fn inventory(&self) -> Timed<'_, (Inventory, Instant)> {
        Timed::lock(&self.inventory, &self.inventory_timing, self.epoch)
    }

    /// Whether the daemon is well, told without waiting for any lock a
    /// scrape holds: programs attached, and the kernel maps and the
    /// inventory read lately, none of their reads wedged.
    pub fn liveness(&self) -> Result<(), Unhealthy> {
        if self.programs.is_empty() {
            return Err(Unhealthy::NoPrograms);
        }
        self.maps_timing.check(self.epoch, "kernel maps", MAPS_STUCK)?;
        self.inventory_timing
            .check(self.epoch, "socket inventory", INVENTORY_STUCK)
    }

    /// Inventory snapshots taken since start (requests that shared one
    /// count it once).
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots_taken.load(Ordering::Relaxed)
    }

    /// Every port's counters.
    pub fn ports(&self) -> Vec<PortCount> {
        self.maps().ports()
    }

    /// Ports the kernel handed out from each pool, by way.
    pub fn assigned(&self) -> Vec<AssignedCount> {
        lock(&self.maps).assigned()
    }

    /// Of the programs attached at start, those the kernel runs now: a
    /// cgroup link may have been detached from outside.
    pub fn attached_now(&self) -> Vec<&'static str> {
        lock(&self.maps).attached.attached(&self.programs)
    }

    /// Each program's runs (while the kernel counts them) and skipped runs.
    pub fn program_stats(&self) -> ProgramStats {
        // The programs' fdinfo is read without the maps' lock.
        let ids = lock(&self.maps).programs.clone();
        ids.read()
    }

    /// portmon's own health counters.
    pub fn health(&self) -> Health {
        self.maps().health()
    }

    /// Who bound, listened on or connected each socket the kernel side
    /// follows, by cookie.
    pub fn owners(&self) -> HashMap<u64, Owner> {
        self.maps().owners()
    }

    /// Who holds each of `sockets` (a whole snapshot), by cookie: the owner
    /// the kernel programs recorded, else the process found holding it,
    /// looked for among those `wanted` keeps (see `owners`).
    pub fn owners_of(&self, sockets: &[NsSocket], wanted: &dyn Fn(&NsSocket) -> bool) -> HashMap<u64, Owner> {
        let mut owners = self.owners();
        let root = lock(&self.cgroups).root().to_owned();
        let found = lock(&self.found_owners).owners_of(sockets, &owners, wanted, &root);
        owners.extend(found);
        owners
    }

    /// Walks of `/proc` for socket owners since start, and how many of them
    /// a bound cut short.
    pub fn owner_walks(&self) -> (u64, u64) {
        let found = lock(&self.found_owners);
        (found.walks, found.walks_cut_short)
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
        self.maps().bind_before_connect()
    }

    /// How full each namespace's ephemeral pool is, as of `snapshot`.
    pub fn ephemeral(&self, snapshot: &Snapshot) -> EphemeralReport {
        let mut report = exhaustion::assess(
            &snapshot.sockets,
            &snapshot.pools,
            &self.maps().exclusive_sockets(),
            self.settings().ephemeral_destinations,
        );
        if !report.listeners.is_empty() {
            let listeners: std::collections::HashSet<u64> =
                report.listeners.iter().map(|l| l.cookie).collect();
            let owners = self.owners_of(&snapshot.sockets, &|s| listeners.contains(&s.socket.cookie));
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

    /// How long TCP connects spent finding a port, per namespace, and the
    /// searches the map had no room for.
    pub fn connect_search(&self) -> (Vec<SearchTimes>, u64) {
        let maps = self.maps();
        (maps.connect_search(), maps.connect_search.overflow())
    }

    /// Entries and capacity of each kernel map.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        self.maps().usage()
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

    /// Counts of ports that found no block, by namespace and range class.
    pub fn port_overflow(&self) -> Vec<PortOverflow> {
        self.maps().overflow()
    }

    /// Finds new namespaces and opens their sockets; lets gone ones go.
    pub fn rescan_namespaces(&self) {
        let mut guard = self.inventory();
        let _ = guard.0.rescan();
        guard.1 = Instant::now();
    }

    /// Gives back the kernel entries of namespaces that are gone, and
    /// forgets those whose grace period is over.
    ///
    /// A namespace is gone when it held kernel entries before a complete
    /// scan began, the scan did not find it, and no socket portmon follows
    /// is open in it. The scan finds every namespace a process is in or
    /// `/run/netns` names; an open socket holds its namespace alive when
    /// no process is in it any more (a socket handed over, a thread that
    /// left). One missing from both is dead or held only by a namespace
    /// descriptor or a mount elsewhere (which, counting again, takes new
    /// entries: its counters restart from its final counts). A scan the
    /// host cut short decides nothing.
    ///
    /// Returns whether namespaces are coming and going: one appeared in the
    /// maps or went since the last look, or entries wait in quarantine.
    pub fn reclaim(&self) -> bool {
        let (counted, held) = {
            let maps = self.maps();
            (maps.counted_namespaces(), maps.namespaces_with_sockets())
        };
        let appeared = {
            let mut last = lock(&self.last_counted);
            let appeared = counted.iter().any(|netns| !last.contains(netns));
            last.clone_from(&counted);
            appeared
        };
        let (complete, known, names) = {
            let mut guard = self.inventory();
            let names: HashMap<u64, String> = guard
                .0
                .namespaces()
                .iter()
                .map(|n| (n.cookie, n.name.clone()))
                .collect();
            let complete = guard.0.rescan();
            guard.1 = Instant::now();
            let known: std::collections::HashSet<u64> =
                guard.0.namespaces().iter().map(|n| n.cookie).collect();
            (complete, known, names)
        };
        let gone: std::collections::HashSet<u64> = if complete {
            counted
                .difference(&known)
                .filter(|netns| !held.contains(netns))
                .copied()
                .collect()
        } else {
            Default::default()
        };
        let grace = self.settings().netns_grace;
        let (dropped, quarantined): (std::collections::HashSet<u64>, bool) = {
            let mut maps = self.maps();
            maps.reclaim(&gone, &names);
            let dropped = maps.drop_retired(grace).into_iter().collect();
            (dropped, maps.quarantined())
        };
        if !gone.is_empty() || !dropped.is_empty() {
            tracing::debug!(gone = gone.len(), dropped = dropped.len(), "namespaces reclaimed");
        }
        if !dropped.is_empty() {
            lock(&self.failures).forget(&dropped);
        }
        appeared || !gone.is_empty() || quarantined
    }

    /// A fresh inventory of every namespace, with the names and workloads
    /// of its namespaces: the one being taken if a snapshot is under way
    /// (its requesters share it).
    pub fn snapshot(&self) -> Arc<Inventoried> {
        self.snapshots
            .run(|| {
                let (snapshot, namespaces) = self.take_snapshot();
                self.snapshots_taken.fetch_add(1, Ordering::Relaxed);
                let names = namespaces.iter().map(|(c, n, _)| (*c, n.clone())).collect();
                let workloads = namespaces.into_iter().map(|(_, n, w)| (n, w)).collect();
                Inventoried {
                    snapshot,
                    names,
                    workloads,
                }
            })
            .0
    }

    /// A fresh inventory of every namespace, and each namespace's cookie,
    /// name and workload: those portmon could enter, and those it knows only
    /// from the kernel programs' records of their sockets (see
    /// [`State::recorded_namespaces`]).
    fn take_snapshot(&self) -> (Snapshot, Vec<(u64, String, Workload)>) {
        let mut guard = self.inventory();
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
        // Namespaces gone within their grace period keep the names their
        // series had.
        let retired: Vec<(u64, String, Workload)> = self
            .maps()
            .retired_names()
            .into_iter()
            .map(|(cookie, name)| (cookie, name, Workload::default()))
            .collect();
        for (cookie, name, workload) in self.recorded_namespaces().into_iter().chain(retired) {
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
        let mut inventory = self.inventory();
        for (_, _, workload) in &mut found {
            inventory.0.complete_workload(workload);
        }
        found
    }
}
