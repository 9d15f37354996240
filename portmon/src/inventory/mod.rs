//! The live inventory: every TCP and UDP socket of every network namespace,
//! from netlink `sock_diag` dumps (what `ss` reads), so counts match `ss`
//! exactly, sockets older than portmon and TIME_WAIT ones included.
//!
//! A netlink socket belongs to the namespace it was created in, so portmon
//! opens its sockets in each namespace (inside it, once) and dumps through
//! them from any thread afterwards. The kernel walks its socket tables once
//! per dump and namespace, visiting every socket of the host: `netlink`
//! asks for both families in one walk, `sockstat` leaves out the walk for
//! bound and idle sockets when there can be none, `split` has two cores
//! fill a big namespace's dump, and `lanes` runs the dumps side by side.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::SocketAddr,
};

use portmon_common::{Family, Proto};
use serde::Serialize;

use crate::{
    ephemeral::{PoolSettings, PoolSysctls},
    netns::{self, Namespaces, Netns},
};

mod lanes;
mod netlink;
mod parse;
mod sockstat;
mod split;

pub use netlink::DumpError;

use lanes::{Job, Lane};
use netlink::SockDiag;
use sockstat::Sockstat;
use split::{Cut, Histogram};

/// A TCP state, or for UDP the two `ss` shows (`UNCONN` is CLOSE,
/// a connected UDP socket is ESTABLISHED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// TCP only: bound, neither listening nor connected.
    Bound,
}

impl SocketState {
    /// Every state, in label order.
    pub const ALL: &'static [SocketState] = &[
        SocketState::Bound,
        SocketState::Close,
        SocketState::CloseWait,
        SocketState::Closing,
        SocketState::Established,
        SocketState::FinWait1,
        SocketState::FinWait2,
        SocketState::LastAck,
        SocketState::Listen,
        SocketState::NewSynRecv,
        SocketState::SynRecv,
        SocketState::SynSent,
        SocketState::TimeWait,
    ];

    /// The kernel's number (include/net/tcp_states.h).
    pub fn from_kernel(state: u8) -> Option<Self> {
        Some(match state {
            1 => SocketState::Established,
            2 => SocketState::SynSent,
            3 => SocketState::SynRecv,
            4 => SocketState::FinWait1,
            5 => SocketState::FinWait2,
            6 => SocketState::TimeWait,
            7 => SocketState::Close,
            8 => SocketState::CloseWait,
            9 => SocketState::LastAck,
            10 => SocketState::Listen,
            11 => SocketState::Closing,
            12 => SocketState::NewSynRecv,
            _ => return None,
        })
    }

    /// The label used in metrics and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            SocketState::Established => "established",
            SocketState::SynSent => "syn_sent",
            SocketState::SynRecv => "syn_recv",
            SocketState::FinWait1 => "fin_wait1",
            SocketState::FinWait2 => "fin_wait2",
            SocketState::TimeWait => "time_wait",
            SocketState::Close => "close",
            SocketState::CloseWait => "close_wait",
            SocketState::LastAck => "last_ack",
            SocketState::Listen => "listen",
            SocketState::Closing => "closing",
            SocketState::NewSynRecv => "new_syn_recv",
            SocketState::Bound => "bound",
        }
    }
}

/// One socket holding (or having held, in TIME_WAIT) a local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub proto: Proto,
    pub family: Family,
    pub state: SocketState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket cookie: the same number the kernel programs see.
    pub cookie: u64,
    pub uid: u32,
    pub inode: u32,
}

/// A socket and the namespace it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NsSocket {
    /// Network namespace cookie.
    pub netns: u64,
    #[serde(flatten)]
    pub socket: Socket,
}

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
}

/// What portmon keeps open in one namespace: opened inside it once, read
/// from any thread afterwards.
#[derive(Debug)]
struct NetnsHandles {
    lanes: [Lane; 2],
    sysctls: Option<PoolSysctls>,
    sockstat: Option<Sockstat>,
    /// Where the last snapshot says to cut its TCP dump in two.
    cut: Option<Cut>,
}

impl NetnsHandles {
    /// Opens them in the calling thread's namespace.
    fn open() -> Result<Self, InventoryError> {
        let lane = || SockDiag::open().map(Lane::new).map_err(InventoryError::Open);
        let lanes = [lane()?, lane()?];
        let sysctls = PoolSysctls::open()
            .inspect_err(|err| tracing::debug!("no ephemeral port sysctls: {err}"))
            .ok();
        let sockstat = Sockstat::open()
            .inspect_err(|err| tracing::debug!("no socket counters: {err}"))
            .ok();
        Ok(Self {
            lanes,
            sysctls,
            sockstat,
            cut: None,
        })
    }
}

/// Keeps sock_diag sockets in every namespace and takes snapshots through
/// them. Sockets of namespaces that disappear are closed at the next scan,
/// so portmon does not keep a dead namespace alive.
#[derive(Debug, Default)]
pub struct Inventory {
    namespaces: Namespaces,
    open: HashMap<u64, NetnsHandles>,
    dump_errors: BTreeMap<(Proto, Family), u64>,
}

impl Inventory {
    /// An inventory of every namespace found now.
    pub fn scan() -> Self {
        let mut inventory = Self::default();
        inventory.rescan();
        inventory
    }

    /// An inventory of the calling thread's namespace only (no privileges
    /// needed beyond those of a plain `ss`).
    pub fn current() -> Result<Self, InventoryError> {
        let cookie =
            netns::current_cookie().map_err(|e| InventoryError::Open(io::Error::other(e.to_string())))?;
        let mut inventory = Self::default();
        inventory.open.insert(cookie, NetnsHandles::open()?);
        Ok(inventory)
    }

    /// Finds namespaces again: opens sockets for new ones, closes those of
    /// gone ones.
    pub fn rescan(&mut self) {
        self.namespaces.rescan();
        let present: Vec<Netns> = self.namespaces.iter().cloned().collect();
        self.open
            .retain(|cookie, _| present.iter().any(|n| n.cookie == *cookie));
        for ns in present {
            if self.open.contains_key(&ns.cookie) {
                continue;
            }
            match netns::run_in(&ns.path, NetnsHandles::open) {
                Ok(Ok(handles)) => {
                    self.open.insert(ns.cookie, handles);
                }
                Ok(Err(err)) => tracing::debug!(netns = %ns.name, "no sock_diag socket: {err}"),
                Err(err) => tracing::debug!(netns = %ns.name, "cannot enter: {err}"),
            }
        }
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
                Some(Err(err)) => snapshot
                    .errors
                    .push((cookie.to_string(), crate::loader::error_line(&err))),
                None => {}
            }
        }
        let bound_idle = sockstat::bound_idle_possible(
            self.open
                .values()
                .map(|handles| handles.sockstat.as_ref().and_then(|s| s.read().ok())),
        );
        let jobs = self
            .open
            .iter_mut()
            .flat_map(|(&netns, handles)| {
                let dumps = lanes::plan(handles.cut, bound_idle);
                handles
                    .lanes
                    .iter_mut()
                    .zip(dumps)
                    .map(move |(lane, dumps)| Job::new(netns, lane, dumps))
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
                    .push((outcome.netns.to_string(), crate::loader::error_line(&err)));
            }
            histograms
                .entry(outcome.netns)
                .or_default()
                .merge(&outcome.histogram);
        }
        for (netns, histogram) in histograms {
            if let Some(handles) = self.open.get_mut(&netns) {
                handles.cut = histogram.cut();
            }
        }
        snapshot.dump_errors.clone_from(&self.dump_errors);
        snapshot
    }

    fn count_failure(&mut self, dump: netlink::Dump, netns: u64, err: &DumpError) {
        let name = self.namespaces.get(netns).map_or("", |n| n.name.as_str());
        tracing::warn!(
            netns = name,
            proto = %dump.proto(),
            attempts = netlink::ATTEMPTS,
            "sock_diag dump failed, its sockets are missing from this scrape: {}",
            crate::loader::error_line(err)
        );
        for &family in dump.families() {
            *self.dump_errors.entry((dump.proto(), family)).or_default() += 1;
        }
    }
}

impl Socket {
    /// The state as `ss` names it: `unconn` for an unconnected UDP socket,
    /// the TCP state's name otherwise.
    pub fn state_label(&self) -> &'static str {
        match (self.proto, self.state) {
            (Proto::Udp, SocketState::Close) => "unconn",
            (_, state) => state.label(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot open a sock_diag netlink socket")]
    Open(#[source] io::Error),
}
