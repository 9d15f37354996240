//! Failed binds and connects, from the kernel's ring buffer: settled (their
//! namespace found, their errno inferred where only user space can tell),
//! counted and kept for the API and the log.

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant, SystemTime},
};

pub use portmon_common::Errno;
use portmon_common::{FailureEvent, Family, Op, Proto};
use serde::Serialize;

use crate::{
    exhaustion,
    kernel::{
        bpf::events::{AsyncFailureEvents, Drained, FailureEvents},
        netns, procfs,
    },
    log_budget::LogBudget,
    namespaces::Namespaces,
};

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
    /// Failures counted without their port, or without port and namespace,
    /// because the counts held [`FAILURE_KEYS`] keys already.
    pub folded: u64,
    /// Failures not logged one by one (see `LogBudget`).
    pub log_lines_held: u64,
}

/// What the failure log could not keep as it came, for portmon's health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureLogHealth {
    pub undecodable: u64,
    pub folded: u64,
    pub log_lines_held: u64,
}

/// How many failures `FailureLog` keeps in full.
pub const RECENT_FAILURES: usize = 1024;

/// How many distinct (namespace, operation, protocol, family, port, errno)
/// keys the counts hold before new ones lose their port (then also their
/// namespace, at twice as many): failures on random ports in namespaces
/// made for the purpose must not grow the daemon without bound, and every
/// failure stays counted.
pub const FAILURE_KEYS: usize = 16_384;

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
        self.count(key, 1);
        if self.recent.len() == RECENT_FAILURES {
            self.recent.pop_front();
        }
        self.recent.push_back(failure);
    }

    fn count(&mut self, mut key: FailureKey, n: u64) {
        if !self.counts.contains_key(&key) && self.counts.len() >= FAILURE_KEYS {
            key.port = 0;
            if !self.counts.contains_key(&key) && self.counts.len() >= 2 * FAILURE_KEYS {
                key.netns = 0;
            }
            self.folded += n;
        }
        *self.counts.entry(key).or_default() += n;
    }

    /// Takes in another log's counts and failures (a batch settled apart).
    pub fn absorb(&mut self, other: FailureLog) {
        for (key, n) in other.counts {
            self.count(key, n);
        }
        for failure in other.recent {
            if self.recent.len() == RECENT_FAILURES {
                self.recent.pop_front();
            }
            self.recent.push_back(failure);
        }
        self.undecodable += other.undecodable;
        self.folded += other.folded;
        self.log_lines_held = self.log_lines_held.max(other.log_lines_held);
    }

    /// What it could not keep as it came.
    pub fn health(&self) -> FailureLogHealth {
        FailureLogHealth {
            undecodable: self.undecodable,
            folded: self.folded,
            log_lines_held: self.log_lines_held,
        }
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

/// Turns failure events into [`Failure`]s: finds each one's namespace and,
/// for a failed bind, infers the errno the kernel could not report.
#[derive(Debug)]
pub struct Settler {
    namespaces: Namespaces,
    budget: LogBudget,
}

/// Failures logged one by one per [`LOG_INTERVAL`]; the rest are summed up.
pub const LOG_LINES: u32 = 20;
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Default for Settler {
    fn default() -> Self {
        Self {
            namespaces: Namespaces::default(),
            budget: LogBudget::new(LOG_LINES, LOG_INTERVAL),
        }
    }
}

impl Settler {
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
                        tracing::warn!(
                        op = %failure.op, errno = failure.errno.label(), inferred = failure.inferred,
                        proto = %failure.proto, addr = %failure.addr, port = failure.port,
                        pid = failure.pid, comm = %failure.comm, cgroup = failure.cgroup, netns = failure.netns,
                        "{} {what}", failure.op,
                        );
                    }
                    log.record(failure);
                    taken += 1;
                }
                None => log.undecodable += 1,
            }
        }
        log.log_lines_held = self.budget.held_total();
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
            None => (self.infer_bind_errno(event, addr), true),
        };
        Some(Failure {
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
                .and_then(|p| {
                    netns::run_in(p, || procfs::sysctl_u32("net/ipv4/ip_unprivileged_port_start")).ok()
                })
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

/// Reads the ring buffer and settles what it finds, in the calling thread:
/// for tests and tools that poll. The daemon [`follow`]s it instead.
#[derive(Debug)]
pub struct FailureReader {
    events: FailureEvents,
    settler: Settler,
}

impl FailureReader {
    pub fn new(events: FailureEvents) -> Self {
        Self {
            events,
            settler: Settler::default(),
        }
    }

    /// Takes every event waiting now into `log`; returns how many.
    pub fn drain_into(&mut self, log: &mut FailureLog) -> usize {
        let drained = self.events.drain();
        self.settler.settle_into(drained, log, &ReaderProgress::default())
    }
}

/// Waits on the ring buffer and files failures into `log` as they come,
/// until the task is dropped. Settling may enter a namespace or read
/// `/proc`, so it runs on the blocking pool, one batch at a time.
pub async fn follow(
    events: FailureEvents,
    log: Arc<Mutex<FailureLog>>,
    progress: Arc<ReaderProgress>,
) -> io::Result<()> {
    let mut ring = AsyncFailureEvents::new(events)?;
    let mut settler = Settler::default();
    loop {
        let interval = settler.budget.interval();
        let Ok(drained) = tokio::time::timeout(interval, ring.next_batch()).await else {
            // A storm that stopped still gets its summary line.
            settler.budget.roll(Instant::now());
            continue;
        };
        let drained = drained?;
        if drained.is_empty() {
            continue;
        }
        progress.beat();
        let (log, batch_progress) = (log.clone(), progress.clone());
        settler = tokio::task::spawn_blocking(move || {
            let mut batch = FailureLog::default();
            settler.settle_into(drained, &mut batch, &batch_progress);
            let mut shared = log.lock().unwrap_or_else(PoisonError::into_inner);
            // Counts of the whole batch: more failures than `recent` keeps
            // may come in one.
            shared.absorb(batch);
            settler
        })
        .await
        .map_err(io::Error::other)?;
        progress.idle();
    }
}

/// Whether the failure reader moves: when it last made progress on the
/// batch it is working on. A reader waiting for events is idle, not stuck.
#[derive(Debug)]
pub struct ReaderProgress {
    origin: Instant,
    /// Milliseconds since `origin` of the last progress, plus one; 0 when idle.
    busy_ms: AtomicU64,
}

impl Default for ReaderProgress {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            busy_ms: AtomicU64::new(0),
        }
    }
}

impl ReaderProgress {
    /// Records progress now.
    pub fn beat(&self) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        self.busy_ms.store(now, Ordering::Relaxed);
    }

    /// Records that the reader waits for events.
    pub fn idle(&self) {
        self.busy_ms.store(0, Ordering::Relaxed);
    }

    /// How long the reader has been busy without progress (zero when idle).
    pub fn stalled_for(&self) -> Duration {
        match self.busy_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            busy => {
                let now = self.origin.elapsed().as_millis() as u64 + 1;
                Duration::from_millis(now.saturating_sub(busy))
            }
        }
    }
}

/// Whether the process had CAP_NET_BIND_SERVICE; if it is gone, whether it was root.
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

    fn failure() -> Failure {
        Failure {
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
        }
    }

    #[test]
    fn recent_is_bounded() {
        let mut log = FailureLog::default();
        let failure = failure();
        for _ in 0..RECENT_FAILURES + 5 {
            log.record(failure.clone());
        }
        assert_eq!(log.recent().count(), RECENT_FAILURES);
        assert_eq!(log.counts().values().sum::<u64>(), (RECENT_FAILURES + 5) as u64);
    }

    /// A batch settled apart keeps every failure's count, not only the
    /// ones `recent` has room for.
    #[test]
    fn a_batch_larger_than_recent_is_counted_whole() {
        let mut batch = FailureLog::default();
        for _ in 0..3 * RECENT_FAILURES {
            batch.record(failure());
        }
        batch.undecodable = 2;
        let mut shared = FailureLog::default();
        shared.record(failure());
        shared.absorb(batch);
        assert_eq!(
            shared.counts().values().sum::<u64>(),
            3 * RECENT_FAILURES as u64 + 1
        );
        assert_eq!(shared.recent().count(), RECENT_FAILURES);
        assert_eq!(shared.undecodable, 2);
    }

    /// Failures on ever new ports and namespaces stay counted in bounded
    /// memory: past the key limit they lose the port, then the namespace.
    #[test]
    fn keys_are_bounded_and_every_failure_counted() {
        let mut log = FailureLog::default();
        let n = 3 * FAILURE_KEYS as u64;
        for i in 0..n {
            let mut f = failure();
            f.port = (i % 60_000) as u16 + 1;
            f.netns = 100 + i / 60_000 + i;
            log.record(f);
        }
        assert_eq!(log.counts().values().sum::<u64>(), n);
        assert!(
            log.counts().len() <= 2 * FAILURE_KEYS + 1,
            "{}",
            log.counts().len()
        );
        assert_eq!(log.folded, n - FAILURE_KEYS as u64);
    }
}
