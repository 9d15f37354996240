//! From a ring-buffer record to a [`Failure`]: its namespace, and for a
//! failed bind the errno the kernel programs could not see, inferred the
//! way the kernel decides it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use portmon_common::{FailureEvent, Family, Op, Proto};

use super::{holder::Holders, Errno, Failure, FailureLog, ReaderProgress};
use crate::{
    exhaustion,
    kernel::{
        bpf::events::Drained,
        netns,
        netns_opener::{NetnsFile, Wanted},
        procfs::{self, ProcFile},
    },
    log_budget::LogBudget,
    namespaces::Namespaces,
};

/// Turns failure events into [`Failure`]s: finds each one's namespace and,
/// for a failed bind, infers the errno the kernel could not report.
#[derive(Debug)]
pub struct Settler {
    namespaces: Namespaces,
    last_rescan: Option<Instant>,
    facts: HashMap<u64, NetnsFacts>,
    holders: Holders,
    budget: LogBudget,
}

/// Failures logged one by one per [`LOG_INTERVAL`]; the rest are summed up.
pub const LOG_LINES: u32 = 20;
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A storm of failures from namespaces made for the purpose costs a lookup
/// per failure, not a scan of `/proc` or a thread entering a namespace:
/// `/proc` is scanned for a namespace not yet known at most this often,
/// and what an errno is inferred from is read again after as long.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Namespaces whose [`NetnsFacts`] are kept; past it they are read afresh.
const FACTS_KEPT: usize = 1024;

/// What a failed bind's errno is inferred from, in one namespace.
#[derive(Debug, Clone)]
struct NetnsFacts {
    read: Instant,
    local_addresses: Option<Vec<IpAddr>>,
    unprivileged_port_start: Option<u32>,
}

impl Default for Settler {
    fn default() -> Self {
        Self {
            namespaces: Namespaces::default(),
            last_rescan: None,
            facts: HashMap::new(),
            holders: Holders::default(),
            budget: LogBudget::new(LOG_LINES, LOG_INTERVAL),
        }
    }
}

impl Settler {
    /// How often the log summarises failures it did not log one by one.
    pub fn log_interval(&self) -> Duration {
        self.budget.interval()
    }

    /// Ends the log interval if it is over, with its summary line.
    pub fn end_log_interval(&mut self) {
        self.budget.roll(Instant::now());
    }

    /// Settles every event of `drained` into `log`, beating `progress` after
    /// each; returns how many became failures.
    pub fn settle_into(
        &mut self,
        drained: Drained,
        log: &mut FailureLog,
        progress: &ReaderProgress,
    ) -> usize {
        log.undecodable += drained.undecodable;
        let mut taken = 0;
        for event in &drained.events {
            progress.beat();
            match self.settle(event) {
                Some(failure) => {
                    let what = match failure.exhaustion {
                        Some(_) => "failed: no ephemeral port left",
                        None => "failed",
                    };
                    if self.budget.allow(Instant::now()) {
                        if let Some(holder) = &failure.holder {
                            tracing::warn!(
                            op = %failure.op, errno = failure.errno.label(), inferred = failure.inferred,
                            proto = %failure.proto, addr = %failure.addr, port = failure.port,
                            pid = failure.pid, comm = %failure.comm, cgroup = failure.cgroup, netns = failure.netns,
                            holder_pid = holder.pid, holder_comm = %holder.comm,
                            holder_unit = holder.unit.as_deref().unwrap_or(""),
                            "{} {what}: port {} is held by {holder}", failure.op, failure.port,
                            );
                        } else {
                            tracing::warn!(
                            op = %failure.op, errno = failure.errno.label(), inferred = failure.inferred,
                            proto = %failure.proto, addr = %failure.addr, port = failure.port,
                            pid = failure.pid, comm = %failure.comm, cgroup = failure.cgroup, netns = failure.netns,
                            "{} {what}", failure.op,
                            );
                        }
                    }
                    log.record(failure);
                    taken += 1;
                }
                None => log.undecodable += 1,
            }
        }
        log.log_lines_held = self.budget.held_total();
        log.holders_not_looked_up = self.holders.not_looked_up;
        taken
    }

    fn settle(&mut self, event: &FailureEvent) -> Option<Failure> {
        let Decoded {
            op,
            proto,
            family,
            addr,
            errno,
        } = Decoded::of(event)?;
        let netns = self.namespace_cookie(event);
        let (errno, inferred) = match errno {
            Some(errno) => (errno, false),
            None => (self.infer_bind_errno(event, addr, netns), true),
        };
        let holder = (errno == Errno::AddrInUse && op == Op::Bind && event.port != 0)
            .then(|| {
                let path = self.namespace_path(event);
                self.holders
                    .holder_of(path.as_deref(), netns, proto, addr, event.port)
            })
            .flatten();
        Some(Failure {
            holder,
            time: SystemTime::now(),
            op,
            errno,
            inferred,
            proto,
            family,
            addr,
            port: event.port,
            exhaustion: exhaustion::exhausted(op, proto, errno, event.port),
            netns,
            pid: event.pid,
            uid: event.uid,
            comm: procfs::comm_text(&event.comm),
            cgroup: event.cgroup,
            socket_cookie: event.socket_cookie,
        })
    }

    /// A failed bind's errno, by the order `__inet_bind` (net/ipv4/af_inet.c)
    /// checks: a non-local address (EADDRNOTAVAIL), then a privileged port
    /// without CAP_NET_BIND_SERVICE (EACCES), then the port itself
    /// (EADDRINUSE; for port 0, no free port).
    fn infer_bind_errno(&mut self, event: &FailureEvent, addr: IpAddr, netns: u64) -> Errno {
        let facts = self.facts_of(event, netns);
        if !addr.is_unspecified()
            && facts
                .local_addresses
                .is_some_and(|addrs| !addrs.contains(&canonical(addr)))
        {
            return Errno::AddrNotAvail;
        }
        if event.port != 0 {
            let unprivileged_start = facts.unprivileged_port_start.unwrap_or(1024);
            if u32::from(event.port) < unprivileged_start && !may_bind_privileged(event) {
                return Errno::Access;
            }
        }
        Errno::AddrInUse
    }

    /// The facts of the failure's namespace, read afresh when older than
    /// [`RESCAN_EVERY`] or never read.
    fn facts_of(&mut self, event: &FailureEvent, netns: u64) -> NetnsFacts {
        if let Some(facts) = self.facts.get(&netns) {
            if netns != 0 && facts.read.elapsed() < RESCAN_EVERY {
                return facts.clone();
            }
        }
        let path = self.namespace_path(event);
        let facts = NetnsFacts {
            read: Instant::now(),
            // Only where this process may enter the namespace itself (root,
            // or its own namespace): the namespace helper opens files, and
            // the addresses come from a netlink dump getifaddrs makes.
            local_addresses: path
                .as_deref()
                .and_then(|p| netns::run_in(p, netns::local_addresses).ok())
                .and_then(Result::ok),
            unprivileged_port_start: path.as_deref().and_then(unprivileged_port_start_in),
        };
        if netns != 0 {
            if self.facts.len() >= FACTS_KEPT {
                self.facts.retain(|_, f| f.read.elapsed() < RESCAN_EVERY);
            }
            if self.facts.len() < FACTS_KEPT {
                self.facts.insert(netns, facts.clone());
            }
        }
        facts
    }

    /// A path to the failure's namespace: through the thread, which is
    /// still there in all but rare cases, checked against the cookie when
    /// the kernel knew it.
    fn namespace_path(&mut self, event: &FailureEvent) -> Option<PathBuf> {
        for path in [
            format!("/proc/{}/task/{}/ns/net", event.pid, event.tid),
            format!("/proc/{}/ns/net", event.pid),
        ] {
            let path = PathBuf::from(path);
            if let Ok(cookie) = netns::cookie_of(&path) {
                if event.netns == 0 || cookie == event.netns {
                    return Some(path);
                }
            }
        }
        if self.namespaces.get(event.netns).is_none()
            && self.last_rescan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY)
        {
            self.last_rescan = Some(Instant::now());
            // A scan cut short still found what it could.
            let _ = self.namespaces.rescan();
        }
        self.namespaces.get(event.netns).map(|ns| ns.path.clone())
    }

    /// The failure's namespace cookie, from the kernel or through the thread.
    fn namespace_cookie(&mut self, event: &FailureEvent) -> u64 {
        if event.netns != 0 {
            return event.netns;
        }
        self.namespace_path(event)
            .and_then(|p| netns::cookie_of(&p).ok())
            .unwrap_or(0)
    }
}

/// An event's fields as portmon's types: what the kernel side wrote, read
/// without trusting it (an unknown operation, protocol or family is no
/// failure; an errno the programs could not see is `None`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoded {
    pub op: Op,
    pub proto: Proto,
    pub family: Family,
    pub addr: IpAddr,
    pub errno: Option<Errno>,
}

impl Decoded {
    pub(crate) fn of(event: &FailureEvent) -> Option<Self> {
        let family = Family::try_from(event.family).ok()?;
        Some(Self {
            op: Op::try_from(event.op).ok()?,
            proto: Proto::try_from(event.proto).ok()?,
            family,
            addr: address(family, event.addr),
            errno: Errno::from_kernel(event.errno),
        })
    }
}

/// `net.ipv4.ip_unprivileged_port_start` of the namespace at `path`.
fn unprivileged_port_start_in(path: &Path) -> Option<u32> {
    let file = NetnsFile::UnprivilegedPortStart;
    let fd = netns::open_in(path, Wanted::of(&[file])).ok()?.take(file)?;
    let text = ProcFile::from_fd(fd, file.path().unwrap_or_default())
        .read()
        .ok()?;
    text.trim().parse().ok()
}

/// Whether the process had CAP_NET_BIND_SERVICE; if it is gone, whether it was root.
fn may_bind_privileged(event: &FailureEvent) -> bool {
    match procfs::effective_capabilities(&event.pid.to_string()) {
        Ok(caps) => caps & (1 << procfs::CAP_NET_BIND_SERVICE) != 0,
        Err(_) => event.uid == 0,
    }
}

/// A v4-mapped IPv6 address compares as the IPv4 address it carries.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn address(family: Family, bytes: [u8; 16]) -> IpAddr {
    match family {
        Family::Inet => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::Inet6 => canonical(IpAddr::V6(Ipv6Addr::from(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(address(Family::Inet, v4), IpAddr::from([127, 0, 0, 1]));
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            address(Family::Inet6, mapped.octets()),
            IpAddr::from([10, 1, 2, 3])
        );
        let v6: Ipv6Addr = "::1".parse().unwrap();
        assert_eq!(address(Family::Inet6, v6.octets()), IpAddr::V6(v6));
    }
}
