//! Failed binds and connects, from the kernel's ring buffer: settled (their
//! namespace found, their errno inferred where only user space can tell:
//! `settle`), counted and kept for the API and the log (here), as they come
//! (`follow`).

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::SystemTime,
};

pub use portmon_common::Errno;
use portmon_common::{Family, Op, Proto};
use serde::Serialize;

mod follow;
mod holder;
mod settle;

pub use follow::{follow, FailureReader, ReaderProgress};
pub use holder::Holder;
pub(crate) use settle::Decoded;
pub use settle::{Settler, LOG_INTERVAL, LOG_LINES};

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
    /// A bind that failed with EADDRINUSE: the process holding the port,
    /// when it was found (see `holder`); `null` otherwise.
    pub holder: Option<Holder>,
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
    /// Conflicts (EADDRINUSE) recorded without their holder, as the
    /// lookups allowed per second were spent.
    pub holders_not_looked_up: u64,
}

/// What the failure log could not keep as it came, for portmon's health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureLogHealth {
    pub undecodable: u64,
    pub folded: u64,
    pub log_lines_held: u64,
    pub holders_not_looked_up: u64,
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
        self.holders_not_looked_up = self.holders_not_looked_up.max(other.holders_not_looked_up);
    }

    /// What it could not keep as it came.
    pub fn health(&self) -> FailureLogHealth {
        FailureLogHealth {
            undecodable: self.undecodable,
            folded: self.folded,
            log_lines_held: self.log_lines_held,
            holders_not_looked_up: self.holders_not_looked_up,
        }
    }

    /// Failure counts since start.
    pub fn counts(&self) -> &BTreeMap<FailureKey, u64> {
        &self.counts
    }

    /// Forgets the counts of the namespaces `gone` (their grace is over);
    /// the recent failures, a bounded list, age out on their own.
    pub fn forget(&mut self, gone: &std::collections::HashSet<u64>) {
        self.counts.retain(|k, _| !gone.contains(&k.netns));
    }

    /// The most recent failures, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Failure> {
        self.recent.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            holder: None,
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
