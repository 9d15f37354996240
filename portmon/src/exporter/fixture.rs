//! A scrape source of plain data for the exporter's unit tests, changed
//! between scrapes as a host's activity would change.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Mutex,
};

use portmon_common::{Family, Op, PortStats, Proto, Role};

use super::{NetnsLabel, ScrapeInput, ScrapeSource};
use crate::{
    exhaustion::EphemeralReport,
    failures::{Errno, FailureKey},
    kernel::{
        bpf::{
            connect_search::SearchTimes,
            counters::{Health, PortCount, PortOverflow},
            pools::AssignedCount,
            program_stats::{ProgramMisses, ProgramRuns},
        },
        sock_diag::{NsSocket, Socket, SocketState},
    },
    registry::Registry,
    state::ReloadStatus,
    workload::Workload,
};

/// What the next scrape reads.
#[derive(Debug)]
pub struct Host {
    pub ports: Vec<PortCount>,
    pub overflow: Vec<PortOverflow>,
    pub assigned: Vec<AssignedCount>,
    pub program_runs: Option<Vec<ProgramRuns>>,
    pub program_misses: Vec<ProgramMisses>,
    pub failures: BTreeMap<FailureKey, u64>,
    pub sockets: Vec<NsSocket>,
    pub port_series_limit: usize,
    pub netns_label: NetnsLabel,
    pub reload: ReloadStatus,
    pub workloads: Vec<(String, Workload)>,
    pub connect_search: Vec<SearchTimes>,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            overflow: Vec::new(),
            assigned: Vec::new(),
            program_runs: None,
            program_misses: Vec::new(),
            failures: BTreeMap::new(),
            sockets: Vec::new(),
            port_series_limit: 1000,
            netns_label: NetnsLabel::Auto,
            reload: ReloadStatus {
                last_successful: true,
                last_success: std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(1_700_000_000),
            },
            workloads: Vec::new(),
            connect_search: Vec::new(),
        }
    }
}

impl Host {
    /// Sets the bind counter of a TCP port in `netns`.
    pub fn binds(&mut self, netns: u64, port: u16, binds: u64) {
        self.ports
            .retain(|p| !(p.netns == netns && p.port == port && p.role == Role::Local));
        self.ports.push(PortCount {
            netns,
            proto: Proto::Tcp,
            family: Family::Inet,
            role: Role::Local,
            port,
            stats: PortStats {
                binds,
                ..PortStats::default()
            },
        });
    }

    /// Sets the count of failed binds to a TCP port in `netns`.
    pub fn bind_errors(&mut self, netns: u64, port: u16, n: u64) {
        let key = FailureKey {
            netns,
            op: Op::Bind,
            proto: Proto::Tcp,
            family: Family::Inet,
            port,
            errno: Errno::AddrInUse,
        };
        self.failures.insert(key, n);
    }

    /// Adds a TCP socket on `port` in `netns`.
    pub fn socket(&mut self, netns: u64, port: u16, state: SocketState) {
        self.sockets.push(socket(netns, port, state));
    }

    /// Adds a listening TCP socket on `local` in `netns`.
    pub fn listener(&mut self, netns: u64, local: &str) {
        let mut listener = socket(netns, 0, SocketState::Listen);
        listener.socket.local = local.parse().expect("a socket address");
        if listener.socket.local.is_ipv6() {
            listener.socket.family = Family::Inet6;
        }
        self.sockets.push(listener);
    }
}

/// A TCP socket on 127.0.0.1:`port`.
pub fn socket(netns: u64, port: u16, state: SocketState) -> NsSocket {
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    NsSocket {
        netns,
        socket: Socket {
            proto: Proto::Tcp,
            family: Family::Inet,
            state,
            local,
            remote: ([0, 0, 0, 0], 0).into(),
            cookie: 1,
            uid: 0,
            inode: 0,
        },
    }
}

/// A scrape source whose host the test changes between scrapes.
#[derive(Debug, Default)]
pub struct Fixture {
    pub host: Mutex<Host>,
}

impl Fixture {
    pub fn change(&self, change: impl FnOnce(&mut Host)) {
        change(&mut self.host.lock().unwrap());
    }
}

impl ScrapeSource for Fixture {
    fn scrape<R>(&self, build: impl FnOnce(&ScrapeInput<'_>) -> R) -> R {
        let host = self.host.lock().unwrap();
        let names = HashMap::from([(1, "host".to_owned()), (2, "blue".to_owned())]);
        build(&ScrapeInput {
            ports: &host.ports,
            overflow: &host.overflow,
            assigned: &host.assigned,
            failures: &host.failures,
            sockets: &host.sockets,
            registry: &Registry::empty(),
            netns_names: &names,
            health: Health::default(),
            maps: &[],
            programs: &[],
            program_runs: host.program_runs.as_deref(),
            program_misses: &host.program_misses,
            port_series_limit: host.port_series_limit,
            netns_label: host.netns_label,
            ephemeral: &EphemeralReport::default(),
            ephemeral_seconds: 0.0,
            bind_before_connect: &[],
            connect_search: &host.connect_search,
            connect_search_overflow: 0,
            inventory_errors: &BTreeMap::new(),
            reload: host.reload,
            failure_log: Default::default(),
            netns_unwatched: 0,
            netns_scan_errors: 0,
            walk: (false, 0),
            workloads: &host.workloads,
            snapshots: 0,
            owner_walks: (0, 0),
        })
    }
}
