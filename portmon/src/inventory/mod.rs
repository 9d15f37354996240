//! The live inventory: every TCP and UDP socket of every network namespace,
//! from netlink `sock_diag` dumps (what `ss` reads), so counts match `ss`
//! exactly, sockets older than portmon and TIME_WAIT ones included.
//!
//! A netlink socket belongs to the namespace it was created in, so portmon
//! opens its sockets in each namespace (inside it, once) and dumps through
//! them from any thread afterwards. The kernel walks its socket tables once
//! per dump and namespace, visiting every socket of the host:
//! `kernel::sock_diag` asks for both families in one walk, `sockstat`
//! leaves out the walk for bound and idle sockets when there can be none,
//! `split` has two cores fill a big namespace's dump, and `lanes` runs the
//! dumps side by side.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use portmon_common::{Family, Proto};

use crate::{
    exhaustion::{PoolSettings, PoolSysctls},
    kernel::{
        bpf::walk::EhashWalk,
        netns::{self, INIT_NET_COOKIE},
        netns_opener::{self, NetnsFile, Opened, Wanted},
        procfs,
        sock_diag::{self, SockDiag},
    },
    namespaces::{Namespaces, Netns},
    report::error_line,
    workload::RuntimeState,
};

mod lanes;
mod sockstat;
mod split;

pub use crate::kernel::sock_diag::{DumpError, NsSocket, Socket, SocketState};

use lanes::{Job, Lane};
use sockstat::Sockstat;
use split::{Cut, Histogram};

/// Every socket of every namespace on the host, as of one moment, and
/// each namespace's ephemeral port settings.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sockets: Vec<NsSocket>,
    /// Ephemeral pool settings, by namespace cookie.
    pub pools: HashMap<u64, PoolSettings>,
    /// Namespaces that could not be read in full, with the reason.
    pub errors: Vec<(String, String)>,
    /// Dumps that failed since the inventory was made, every attempt
    /// included, by the protocol and family they were to cover.
    pub dump_errors: BTreeMap<(Proto, Family), u64>,
    /// Namespaces known but left out: portmon ran short of file
    /// descriptors for their handles.
    pub unwatched_namespaces: usize,
    /// Namespace scans the host cut short since start (see
    /// [`ScanIncomplete`](crate::namespaces::ScanIncomplete)).
    pub namespace_scan_errors: u64,
    /// Whether the TCP connections of the namespaces sharing the host's
    /// established-socket table came from one walk of it.
    pub walked: bool,
    /// Walks that failed since start (each snapshot then dumps).
    pub walk_errors: u64,
}

/// File descriptors one namespace's handles take: two sock_diag sockets,
/// three sysctl files, two sockstat files, and while they are opened the
/// established-table size.
const DESCRIPTORS_PER_NETNS: u64 = 8;
/// Descriptors kept free of namespace handles, for serving HTTP, reading
/// `/proc` and entering namespaces: running out of them would make every
/// scrape fail, which is worse than leaving some namespaces out (counted).
const RESERVED_DESCRIPTORS: u64 = 128;

/// What portmon keeps open in one namespace: opened inside it once, read
/// from any thread afterwards.
#[derive(Debug)]
struct NetnsHandles {
    lanes: [Lane; 2],
    sysctls: Option<PoolSysctls>,
    sockstat: Option<Sockstat>,
    /// Where the last snapshot says to cut its TCP dump in two.
    cut: Option<Cut>,
    /// Its TCP connections are in the host's established-socket table,
    /// which the walk lists in one pass for every namespace.
    in_host_table: bool,
}

/// What the handles are opened from, in each namespace.
const HANDLE_FILES: Wanted = Wanted::of(&[
    NetnsFile::SockDiag,
    NetnsFile::SockDiagSecond,
    NetnsFile::PortRange,
    NetnsFile::ReservedPorts,
    NetnsFile::TwReuse,
    NetnsFile::Sockstat,
    NetnsFile::Sockstat6,
    NetnsFile::EhashEntries,
]);
const _: () = assert!(HANDLE_FILES.len() as u64 == DESCRIPTORS_PER_NETNS);

impl NetnsHandles {
    /// Opens them in the namespace at `path` (in-process or through the
    /// namespace helper); `None` when that namespace is no longer the one
    /// with `cookie` (its process exited and the pid was reused).
    fn open_in(path: &Path, cookie: u64) -> Result<Option<Self>, InventoryError> {
        let mut opened = netns::open_in(path, HANDLE_FILES).map_err(InventoryError::Enter)?;
        let socket = opened.take(NetnsFile::SockDiag);
        let found = socket.as_ref().and_then(|s| netns::socket_cookie(s.as_fd()).ok());
        if socket.is_some() && found != Some(cookie) {
            return Ok(None);
        }
        let mut handles = Self::from_opened(socket, &mut opened)?;
        handles.in_host_table = cookie == INIT_NET_COOKIE || shares_host_table(&mut opened);
        Ok(Some(handles))
    }

    /// Opens them in the calling thread's namespace.
    fn open_here() -> Result<Self, InventoryError> {
        let mut opened = netns_opener::open_here(HANDLE_FILES);
        Self::from_opened(opened.take(NetnsFile::SockDiag), &mut opened)
    }

    fn from_opened(first: Option<OwnedFd>, opened: &mut Opened) -> Result<Self, InventoryError> {
        let lane = |socket: Option<OwnedFd>| {
            let socket = socket.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not opened"))?;
            SockDiag::over_socket(socket).map(Lane::new)
        };
        let lanes = [
            lane(first).map_err(InventoryError::Open)?,
            lane(opened.take(NetnsFile::SockDiagSecond)).map_err(InventoryError::Open)?,
        ];
        let sysctls = PoolSysctls::from_opened(opened)
            .inspect_err(|err| tracing::debug!("no ephemeral port sysctls: {err}"))
            .ok();
        let sockstat = Sockstat::from_opened(opened)
            .inspect_err(|err| tracing::debug!("no socket counters: {err}"))
            .ok();
        Ok(Self {
            lanes,
            sysctls,
            sockstat,
            cut: None,
            in_host_table: false,
        })
    }
}

/// Whether the namespace's `tcp_ehash_entries` says it shares another's
/// table: the host's, as namespaces are made from it (a namespace made
/// from one with a table of its own never is, with the sysctl set there).
fn shares_host_table(opened: &mut Opened) -> bool {
    let Some(fd) = opened.take(NetnsFile::EhashEntries) else {
        return false;
    };
    let mut text = String::new();
    let read = std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text);
    read.is_ok() && text.trim().parse::<i64>().is_ok_and(|entries| entries < 0)
}

/// Keeps sock_diag sockets in every namespace and takes snapshots through
/// them. Sockets of namespaces that disappear are closed at the next scan,
/// so portmon does not keep a dead namespace alive.
#[derive(Debug, Default)]
pub struct Inventory {
    namespaces: Namespaces,
    open: HashMap<u64, NetnsHandles>,
    dump_errors: BTreeMap<(Proto, Family), u64>,
    unwatched: usize,
    scan_errors: u64,
    /// The walk of the host's established-socket table, where the kernel
    /// allows it.
    walk: Option<EhashWalk>,
    walk_errors: u64,
}

impl Inventory {
    /// Lists the TCP connections of the namespaces sharing the host's
    /// established-socket table with `walk`, in one pass, instead of one
    /// dump per namespace.
    pub fn use_walk(&mut self, walk: EhashWalk) {
        self.walk = Some(walk);
    }

    /// An inventory of every namespace found now.
    pub fn scan() -> Self {
        Self::scan_with(RuntimeState::default())
    }

    /// An inventory of every namespace found now, naming pods from the
    /// runtimes' state in `runtimes`.
    pub fn scan_with(runtimes: RuntimeState) -> Self {
        let mut inventory = Self {
            namespaces: Namespaces::unscanned(runtimes),
            ..Self::default()
        };
        let _ = inventory.rescan();
        inventory
    }

    /// An inventory of the calling thread's namespace only (no privileges
    /// needed beyond those of a plain `ss`).
    pub fn current() -> Result<Self, InventoryError> {
        let cookie =
            netns::current_cookie().map_err(|e| InventoryError::Open(io::Error::other(e.to_string())))?;
        let mut inventory = Self::default();
        inventory.open.insert(cookie, NetnsHandles::open_here()?);
        Ok(inventory)
    }

    /// Finds namespaces again: opens sockets for new ones, closes those of
    /// gone ones.
    /// Handles of namespaces gone are closed only after a complete scan; new
    /// namespaces get handles while descriptors last. Returns whether the
    /// scan was complete: only then is a namespace missing from it gone.
    pub fn rescan(&mut self) -> bool {
        let complete = match self.namespaces.rescan() {
            Ok(()) => true,
            Err(err) => {
                self.scan_errors += 1;
                tracing::warn!("{}", error_line(&err));
                false
            }
        };
        let mut present: Vec<Netns> = self.namespaces.iter().cloned().collect();
        // When descriptors run short, the host's namespace and then the
        // oldest ones (lowest cookies) keep theirs.
        present.sort_by_key(|ns| (ns.cookie != INIT_NET_COOKIE, ns.cookie));
        if complete {
            self.open
                .retain(|cookie, _| present.iter().any(|n| n.cookie == *cookie));
        }
        let mut spare = match procfs::descriptors() {
            Ok((open, limit)) => limit.saturating_sub(open).saturating_sub(RESERVED_DESCRIPTORS),
            Err(_) => 0,
        };
        let mut unwatched = 0;
        for ns in present {
            if self.open.contains_key(&ns.cookie) {
                continue;
            }
            if spare < DESCRIPTORS_PER_NETNS {
                unwatched += 1;
                continue;
            }
            match NetnsHandles::open_in(&ns.path, ns.cookie) {
                Ok(Some(handles)) => {
                    self.open.insert(ns.cookie, handles);
                    spare -= DESCRIPTORS_PER_NETNS;
                }
                Ok(None) => tracing::debug!(netns = %ns.name, "its path now leads to another namespace"),
                Err(InventoryError::Enter(err)) => {
                    tracing::debug!(netns = %ns.name, "cannot enter: {}", error_line(&err));
                }
                Err(err) => {
                    unwatched += 1;
                    tracing::debug!(netns = %ns.name, "no sock_diag socket: {err}");
                }
            }
        }
        if unwatched > 0 && unwatched != self.unwatched {
            tracing::warn!(
                unwatched,
                "{unwatched} network namespaces are left out of the inventory for want of file \
                 descriptors: raise LimitNOFILE (see portmon_netns_unwatched)"
            );
        }
        self.unwatched = unwatched;
        complete
    }

    /// Adds what the runtimes' state says about `workload`'s container.
    pub fn complete_workload(&mut self, workload: &mut crate::workload::Workload) {
        self.namespaces.complete_workload(workload);
    }

    /// The namespaces known, by cookie.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// Every socket of every namespace known, and their pool settings. A
    /// dump that fails after every attempt is logged and counted, and its
    /// sockets are missing from this snapshot only.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (&cookie, handles) in &self.open {
            match handles.sysctls.as_ref().map(PoolSysctls::read) {
                Some(Ok(settings)) => {
                    snapshot.pools.insert(cookie, settings);
                }
                Some(Err(err)) => snapshot.errors.push((cookie.to_string(), error_line(&err))),
                None => {}
            }
        }
        let mut walked = Vec::new();
        let walk_ok = match self.walk.as_mut().map(|walk| walk.read(&mut walked)) {
            Some(Ok(())) => true,
            Some(Err(err)) => {
                self.walk_errors += 1;
                tracing::debug!(
                    "every namespace dumps its connections this time: {}",
                    error_line(&err)
                );
                false
            }
            None => false,
        };
        snapshot.walked = walk_ok;
        let counts: HashMap<u64, Option<sockstat::Counts>> = self
            .open
            .iter()
            .map(|(&cookie, handles)| (cookie, handles.sockstat.as_ref().and_then(|s| s.read().ok())))
            .collect();
        let bound_idle = sockstat::bound_idle_possible(counts.values().copied());
        let jobs = self
            .open
            .iter_mut()
            .flat_map(|(&netns, handles)| {
                let udp = counts.get(&netns).copied().flatten().map_or([true; 2], |c| c.udp);
                let walked = walk_ok && handles.in_host_table;
                let dumps = lanes::plan(handles.cut, bound_idle, walked, udp);
                handles
                    .lanes
                    .iter_mut()
                    .zip(dumps)
                    .map(move |(lane, dumps)| Job::new(netns, lane, dumps, !walked))
            })
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let mut outcomes = lanes::run(jobs, threads);
        // The largest lane's buffer takes the others: one copy fewer.
        outcomes.sort_by_key(|outcome| std::cmp::Reverse(outcome.sockets.len()));
        let total: usize = outcomes.iter().map(|o| o.sockets.len()).sum();
        let mut histograms: HashMap<u64, Histogram> = HashMap::new();
        for mut outcome in outcomes {
            if snapshot.sockets.is_empty() {
                snapshot.sockets = outcome.sockets;
                snapshot.sockets.reserve(total - snapshot.sockets.len());
            } else {
                snapshot.sockets.append(&mut outcome.sockets);
            }
            for (dump, err) in outcome.failed {
                self.count_failure(dump, outcome.netns, &err);
                snapshot
                    .errors
                    .push((outcome.netns.to_string(), error_line(&err)));
            }
            histograms
                .entry(outcome.netns)
                .or_default()
                .merge(&outcome.histogram);
        }
        if walk_ok {
            let open = &self.open;
            snapshot.sockets.extend(
                walked
                    .into_iter()
                    .filter(|s| open.get(&s.netns).is_some_and(|h| h.in_host_table)),
            );
        }
        for (netns, histogram) in histograms {
            if let Some(handles) = self.open.get_mut(&netns) {
                handles.cut = histogram.cut();
            }
        }
        snapshot.dump_errors.clone_from(&self.dump_errors);
        snapshot.unwatched_namespaces = self.unwatched;
        snapshot.namespace_scan_errors = self.scan_errors;
        snapshot.walk_errors = self.walk_errors;
        snapshot
    }

    fn count_failure(&mut self, dump: sock_diag::Dump, netns: u64, err: &DumpError) {
        let name = self.namespaces.get(netns).map_or("", |n| n.name.as_str());
        tracing::warn!(
            netns = name,
            proto = %dump.proto(),
            attempts = sock_diag::ATTEMPTS,
            "sock_diag dump failed, its sockets are missing from this scrape: {}",
            error_line(err)
        );
        for &family in dump.families() {
            *self.dump_errors.entry((dump.proto(), family)).or_default() += 1;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot open a sock_diag netlink socket")]
    Open(#[source] io::Error),
    #[error(transparent)]
    Enter(#[from] netns::NetnsError),
}
