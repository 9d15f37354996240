//! Failed binds and connects, from the kernel's ring buffer: decoded, their
//! errno settled where only user space can tell, counted and kept for the
//! API and the log.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::SystemTime,
};

use aya::maps::{MapData, RingBuf};
use portmon_common::{errno, FailureEvent, Family, Op, Proto};
use serde::Serialize;

use crate::netns::{self, Namespaces};

/// The errno of a failure, as far as portmon can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Errno {
    /// A port conflict, or no free port for an exclusive bind.
    #[serde(rename = "EADDRINUSE")]
    AddrInUse,
    /// No local port left for a TCP connect, or a non-local address.
    #[serde(rename = "EADDRNOTAVAIL")]
    AddrNotAvail,
    /// A privileged port without CAP_NET_BIND_SERVICE.
    #[serde(rename = "EACCES")]
    Access,
    /// No local port left for a UDP connect's auto-bind.
    #[serde(rename = "EAGAIN")]
    Again,
}

impl Errno {
    /// Every errno, in label order.
    pub const ALL: &'static [Errno] = &[Errno::Access, Errno::AddrInUse, Errno::AddrNotAvail, Errno::Again];

    /// The C name, used as a metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Errno::AddrInUse => "EADDRINUSE",
            Errno::AddrNotAvail => "EADDRNOTAVAIL",
            Errno::Access => "EACCES",
            Errno::Again => "EAGAIN",
        }
    }

    fn from_kernel(raw: u32) -> Option<Self> {
        match raw {
            errno::EADDRINUSE => Some(Errno::AddrInUse),
            errno::EADDRNOTAVAIL => Some(Errno::AddrNotAvail),
            errno::EACCES => Some(Errno::Access),
            errno::EAGAIN => Some(Errno::Again),
            _ => None,
        }
    }
}

/// One failed bind or connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// When portmon learned of it.
    #[serde(with = "unix_seconds")]
    pub time: SystemTime,
    pub op: Op,
    pub errno: Errno,
    /// True when user space inferred the errno (failed binds: the kernel
    /// offers no hook after bind() returns, see `settle` in portmon-ebpf/src/sockets.rs).
    pub inferred: bool,
    pub proto: Proto,
    pub family: Family,
    /// bind: the local address asked for; connect: the destination.
    pub addr: IpAddr,
    /// bind: the port asked for; connect: the destination port.
    pub port: u16,
    /// The operation that found the ephemeral port pool exhausted, if it did.
    pub exhaustion: Option<Op>,
    /// Network namespace cookie.
    pub netns: u64,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup: u64,
    pub socket_cookie: u64,
}

mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        )
    }
}

/// What `FailureLog` counts a failure under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailureKey {
    pub netns: u64,
    pub op: Op,
    pub proto: Proto,
    pub family: Family,
    pub port: u16,
    pub errno: Errno,
}

/// Counts of failures since start, and the most recent ones in full.
#[derive(Debug, Default)]
pub struct FailureLog {
    counts: BTreeMap<FailureKey, u64>,
    recent: VecDeque<Failure>,
    /// Events that could not be decoded (a kernel/user version mismatch).
    pub undecodable: u64,
}

/// How many failures `FailureLog` keeps in full.
pub const RECENT_FAILURES: usize = 1024;

impl FailureLog {
    /// Records one failure.
    pub fn record(&mut self, failure: Failure) {
        let key = FailureKey {
            netns: failure.netns,
            op: failure.op,
            proto: failure.proto,
            family: failure.family,
            port: failure.port,
            errno: failure.errno,
        };
        *self.counts.entry(key).or_default() += 1;
        if self.recent.len() == RECENT_FAILURES {
            self.recent.pop_front();
        }
        self.recent.push_back(failure);
    }

    /// Failure counts since start.
    pub fn counts(&self) -> &BTreeMap<FailureKey, u64> {
        &self.counts
    }

    /// The most recent failures, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Failure> {
        self.recent.iter()
    }
}

/// Reads the ring buffer and turns events into `Failure`s.
pub struct FailureReader {
    ring: RingBuf<MapData>,
    namespaces: Namespaces,
}

impl std::fmt::Debug for FailureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureReader").finish_non_exhaustive()
    }
}

impl FailureReader {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            namespaces: Namespaces::default(),
        }
    }

    /// The ring buffer's file descriptor, to wait on.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.ring.as_raw_fd()
    }

    /// Takes every event waiting now into `log`; returns how many.
    pub fn drain_into(&mut self, log: &mut FailureLog) -> usize {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(event) => events.push(event),
                None => log.undecodable += 1,
            }
        }
        let mut taken = 0;
        for event in events {
            match self.settle(&event) {
                Some(failure) => {
                    let what = match failure.exhaustion {
                        Some(_) => "failed: no ephemeral port left",
                        None => "failed",
                    };
                    tracing::warn!(
                        op = %failure.op, errno = failure.errno.label(), inferred = failure.inferred,
                        proto = %failure.proto, addr = %failure.addr, port = failure.port,
                        pid = failure.pid, comm = %failure.comm, cgroup = failure.cgroup, netns = failure.netns,
                        "{} {what}", failure.op,
                    );
                    log.record(failure);
                    taken += 1;
                }
                None => log.undecodable += 1,
            }
        }
        taken
    }

    fn settle(&mut self, event: &FailureEvent) -> Option<Failure> {
        let op = Op::try_from(event.op).ok()?;
        let proto = Proto::try_from(event.proto).ok()?;
        let family = Family::try_from(event.family).ok()?;
        let addr = address(family, event.addr);
        let netns = self.namespace_cookie(event);
        let (errno, inferred) = match Errno::from_kernel(event.errno) {
            Some(errno) => (errno, false),
            None => (self.infer_bind_errno(event, addr), true),
        };
        let comm_len = event
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(event.comm.len());
        Some(Failure {
            time: SystemTime::now(),
            op,
            errno,
            inferred,
            proto,
            family,
            addr,
            port: event.port,
            exhaustion: crate::ephemeral::exhausted(op, proto, errno, event.port),
            netns,
            pid: event.pid,
            uid: event.uid,
            comm: String::from_utf8_lossy(&event.comm[..comm_len]).into_owned(),
            cgroup: event.cgroup,
            socket_cookie: event.socket_cookie,
        })
    }

    /// A failed bind's errno, by the order `__inet_bind` (net/ipv4/af_inet.c)
    /// checks: a non-local address (EADDRNOTAVAIL), then a privileged port
    /// without CAP_NET_BIND_SERVICE (EACCES), then the port itself
    /// (EADDRINUSE; for port 0, no free port).
    fn infer_bind_errno(&mut self, event: &FailureEvent, addr: IpAddr) -> Errno {
        let ns_path = self.namespace_path(event);
        if !addr.is_unspecified() {
            if let Some(path) = &ns_path {
                let local = netns::run_in(path, netns::local_addresses)
                    .ok()
                    .and_then(Result::ok);
                if local.is_some_and(|addrs| !addrs.contains(&canonical(addr))) {
                    return Errno::AddrNotAvail;
                }
            }
        }
        if event.port != 0 {
            let unprivileged_start = ns_path
                .as_deref()
                .and_then(|p| netns::run_in(p, || read_sysctl("net/ipv4/ip_unprivileged_port_start")).ok())
                .flatten()
                .unwrap_or(1024);
            if u32::from(event.port) < unprivileged_start && !may_bind_privileged(event) {
                return Errno::Access;
            }
        }
        Errno::AddrInUse
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
        self.namespaces.resolve(event.netns).map(|ns| ns.path.clone())
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

/// Whether the process had CAP_NET_BIND_SERVICE; if it is gone, whether it was root.
fn may_bind_privileged(event: &FailureEvent) -> bool {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let status = std::fs::read_to_string(format!("/proc/{}/status", event.pid));
    let cap_eff = status.ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    });
    match cap_eff {
        Some(caps) => caps & (1 << CAP_NET_BIND_SERVICE) != 0,
        None => event.uid == 0,
    }
}

fn read_sysctl(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
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

/// A ring buffer record as a `FailureEvent`, if it is one.
fn decode(bytes: &[u8]) -> Option<FailureEvent> {
    if bytes.len() < std::mem::size_of::<FailureEvent>() {
        return None;
    }
    // SAFETY: the length is checked; FailureEvent is plain old data (any bit
    // pattern is valid) and read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FailureEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_short_records() {
        assert!(decode(&[0u8; 10]).is_none());
        let event = decode(&[0u8; std::mem::size_of::<FailureEvent>()]);
        assert_eq!(event.map(|e| e.port), Some(0));
    }

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

    #[test]
    fn recent_is_bounded() {
        let mut log = FailureLog::default();
        let failure = Failure {
            time: SystemTime::UNIX_EPOCH,
            op: Op::Bind,
            errno: Errno::AddrInUse,
            inferred: true,
            proto: Proto::Tcp,
            family: Family::Inet,
            addr: IpAddr::from([0, 0, 0, 0]),
            port: 80,
            exhaustion: None,
            netns: 1,
            pid: 1,
            uid: 0,
            comm: "x".into(),
            cgroup: 1,
            socket_cookie: 1,
        };
        for _ in 0..RECENT_FAILURES + 5 {
            log.record(failure.clone());
        }
        assert_eq!(log.recent().count(), RECENT_FAILURES);
        assert_eq!(log.counts().values().sum::<u64>(), (RECENT_FAILURES + 5) as u64);
    }
}
