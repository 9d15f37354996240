//! Who holds the port a bind failed on (EADDRINUSE): the socket bound or
//! listening there in the failure's namespace, found at failure time (the
//! holder may be gone soon after), and the process holding that socket.
//!
//! A storm of conflicts must not become a storm of lookups: an answer is
//! kept for [`KEPT`] per (namespace, protocol, port), and at most
//! [`LOOKUPS_PER_SECOND`] lookups (a filtered `sock_diag` dump and a walk
//! of `/proc`) run per second, taking at most [`LOOKUP_TIME_PER_SECOND`]
//! of it (a walk of a large host is slow, and the failures behind it
//! wait); past either a conflict is recorded without its holder, and
//! counted.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use portmon_common::{tcp_state, Family, Proto};
use serde::Serialize;

use crate::{
    cgroups,
    kernel::{
        mounts::Mounts,
        netns,
        netns_opener::{self, NetnsFile, Wanted},
        procfs,
        sock_diag::{self, Dump, End, NsSocket, Ports, SockDiag, SocketState},
    },
    owners,
};

/// How long the holder of a port, once looked up, answers for it.
pub const KEPT: Duration = Duration::from_secs(1);
/// Lookups that may run in one second.
pub const LOOKUPS_PER_SECOND: u32 = 4;
/// The time lookups may take in one second.
pub const LOOKUP_TIME_PER_SECOND: Duration = Duration::from_millis(250);
/// (namespace, protocol, port) answers kept; past it old ones go first.
const ANSWERS_KEPT: usize = 1024;

/// The process holding the port a bind failed on: the other side of the
/// conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup: u64,
    /// The systemd unit its cgroup names (`postgresql.service`), if any.
    pub unit: Option<String>,
    /// The holding socket's cookie.
    pub socket_cookie: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.comm, self.pid)?;
        if let Some(unit) = &self.unit {
            write!(f, " of {unit}")?;
        }
        Ok(())
    }
}

/// Holders looked up lately, and the budget for more.
#[derive(Debug)]
pub(super) struct Holders {
    answers: HashMap<(u64, Proto, u16), (Instant, Option<Holder>)>,
    second: Instant,
    lookups: u32,
    spent: Duration,
    cgroup_root: Option<PathBuf>,
    /// Conflicts recorded without their holder, the lookup budget spent.
    pub not_looked_up: u64,
}

impl Default for Holders {
    fn default() -> Self {
        Self {
            answers: HashMap::new(),
            second: Instant::now(),
            lookups: 0,
            spent: Duration::ZERO,
            cgroup_root: None,
            not_looked_up: 0,
        }
    }
}

impl Holders {
    /// The holder of `port` in the namespace at `path` (cookie `netns`),
    /// for a bind of `addr` that failed.
    pub fn holder_of(
        &mut self,
        path: Option<&Path>,
        netns: u64,
        proto: Proto,
        addr: IpAddr,
        port: u16,
    ) -> Option<Holder> {
        let key = (netns, proto, port);
        if let Some((at, holder)) = self.answers.get(&key) {
            if netns != 0 && at.elapsed() < KEPT {
                return holder.clone();
            }
        }
        if self.second.elapsed() >= Duration::from_secs(1) {
            self.second = Instant::now();
            self.lookups = 0;
            self.spent = Duration::ZERO;
        }
        if self.lookups >= LOOKUPS_PER_SECOND || self.spent >= LOOKUP_TIME_PER_SECOND {
            self.not_looked_up += 1;
            return None;
        }
        self.lookups += 1;
        let started = Instant::now();
        let holder = path.and_then(|p| self.look_up(p, netns, proto, addr, port));
        self.spent += started.elapsed();
        if netns != 0 {
            if self.answers.len() >= ANSWERS_KEPT {
                self.answers.retain(|_, (at, _)| at.elapsed() < KEPT);
            }
            if self.answers.len() < ANSWERS_KEPT {
                self.answers.insert(key, (Instant::now(), holder.clone()));
            }
        }
        holder
    }

    fn look_up(&mut self, path: &Path, netns: u64, proto: Proto, addr: IpAddr, port: u16) -> Option<Holder> {
        let sockets = holding_sockets(path, netns, proto, addr, port);
        let inodes: Vec<u32> = sockets.iter().map(|s| s.socket.inode).collect();
        if inodes.is_empty() {
            return None;
        }
        let walk = netns_opener::find_socket_owners(&inodes);
        let root = self.cgroup_root.get_or_insert_with(cgroup_root).clone();
        sockets.iter().find_map(|s| {
            let pid = *walk.holders.get(&s.socket.inode)?;
            let owner = owners::process_owner(pid, netns, &root)?;
            let path = cgroups::path_of(Path::new(&format!("/proc/{pid}"))).unwrap_or_default();
            Some(Holder {
                pid,
                comm: procfs::comm_text(&owner.comm),
                cgroup: owner.cgroup,
                unit: cgroups::systemd_unit(&String::from_utf8_lossy(&path)).map(str::to_owned),
                socket_cookie: s.socket.cookie,
            })
        })
    }
}

fn cgroup_root() -> PathBuf {
    Mounts::read()
        .ok()
        .and_then(|m| m.cgroup2().map(|c| c.mount_point.clone()))
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// The sockets of the namespace at `path` holding `port` against a bind of
/// `addr`, listeners first; sockets with no inode (TIME_WAIT) hold no
/// process and are left out.
fn holding_sockets(path: &Path, netns: u64, proto: Proto, addr: IpAddr, port: u16) -> Vec<NsSocket> {
    let file = NetnsFile::SockDiag;
    let Some(fd) = netns::open_in(path, Wanted::of(&[file]))
        .ok()
        .and_then(|mut o| o.take(file))
    else {
        return Vec::new();
    };
    let Ok(mut diag) = SockDiag::over_socket(fd) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let dumps: &[Dump] = match proto {
        Proto::Tcp => &[Dump::Tcp {
            states: !(1 << tcp_state::TIME_WAIT) & !(1 << tcp_state::NEW_SYN_RECV)
                | sock_diag::TCP_BOUND_INACTIVE,
            ports: Ports::Exactly(End::Local, port),
        }],
        Proto::Udp => &[Dump::Udp(Family::Inet), Dump::Udp(Family::Inet6)],
    };
    for &dump in dumps {
        let _ = diag.dump(dump, netns, &mut found);
    }
    found.retain(|s| {
        let local = s.socket.local.ip();
        s.socket.local.port() == port
            && s.socket.inode != 0
            && (addr.is_unspecified() || local.is_unspecified() || local == addr)
    });
    found.sort_by_key(|s| s.socket.state != SocketState::Listen);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storm on ever new ports costs [`LOOKUPS_PER_SECOND`] lookups a
    /// second; the rest go without a holder, counted, and a port looked up
    /// is answered from what was kept.
    #[test]
    fn lookups_are_bounded_per_second_and_kept_per_port() {
        let mut holders = Holders::default();
        let any = IpAddr::from([0, 0, 0, 0]);
        for port in 1..=LOOKUPS_PER_SECOND as u16 {
            assert_eq!(holders.holder_of(None, 7, Proto::Tcp, any, port), None);
        }
        assert_eq!(holders.not_looked_up, 0);
        for port in 100..110 {
            assert_eq!(holders.holder_of(None, 7, Proto::Tcp, any, port), None);
        }
        assert_eq!(holders.not_looked_up, 10, "the second's lookups are spent");
        assert_eq!(holders.holder_of(None, 7, Proto::Tcp, any, 1), None);
        assert_eq!(holders.not_looked_up, 10, "port 1's answer is kept");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(holders.holder_of(None, 7, Proto::Tcp, any, 200), None);
        assert_eq!(holders.not_looked_up, 10, "a new second, new lookups");
    }

    #[test]
    fn a_holder_reads_as_the_log_says_it() {
        let mut holder = Holder {
            pid: 812,
            comm: "postgres".into(),
            cgroup: 5,
            unit: Some("postgresql.service".into()),
            socket_cookie: 9,
        };
        assert_eq!(holder.to_string(), "postgres(812) of postgresql.service");
        holder.unit = None;
        assert_eq!(holder.to_string(), "postgres(812)");
    }
}
