//! The dumps of a snapshot, run side by side. Each namespace has two lanes,
//! a lane being a sock_diag socket and the dumps it runs one after the
//! other (a netlink socket runs one dump at a time). The kernel fills each
//! datagram in the `recv` of the thread that reads it, so lanes on
//! separate threads use separate cores.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use portmon_common::Family;

use super::split::{Cut, Histogram};
use crate::kernel::{
    sock_diag::{Dump, DumpError, NsSocket, Ports, SockDiag, TCP_BOUND_INACTIVE},
    threads,
};

/// Every TCP state as `ss -a` asks (`SS_ALL`, bits 0–12).
const TCP_STATES: u32 = (1 << 13) - 1;
/// `TCPF_LISTEN`: `inet_diag_dump_icsk` stops before the established
/// table when no other state is asked for.
const TCP_LISTEN: u32 = 1 << portmon_common::tcp_state::LISTEN;

/// The dumps of one namespace's two lanes: its TCP connections, and the
/// rest — the bound and idle sockets when there may be any, UDP. When there
/// can be none, and the last snapshot says where, the connections are cut
/// in two by port, the upper half on the second lane. Not otherwise: that
/// walk already keeps a second core busy, and a cut costs a walk more,
/// which made the scrape slower than no cut (docs/performance.md).
///
/// When the walk of the host's table lists the namespace's connections,
/// its TCP dump asks for listeners only, which the kernel finds in the
/// listening table without walking the established one.
///
/// A family's UDP dump is left out where the namespace's counter says it
/// has no UDP socket of that family (`udp`, IPv4 then IPv6).
pub(super) fn plan(cut: Option<Cut>, bound_idle: bool, walked: bool, udp: [bool; 2]) -> [Vec<Dump>; 2] {
    let states = if walked { TCP_LISTEN } else { TCP_STATES };
    let cut = cut.filter(|_| !walked);
    let tcp = |ports| Dump::Tcp { states, ports };
    let [first, upper] = match cut.filter(|_| !bound_idle) {
        Some(cut) => cut.halves().map(Some),
        None => [Some(Ports::All), None],
    };
    let bound = bound_idle.then_some(Dump::Tcp {
        states: TCP_BOUND_INACTIVE,
        ports: Ports::All,
    });
    let rest = bound
        .into_iter()
        .chain(upper.map(tcp))
        .chain(
            [Dump::Udp(Family::Inet), Dump::Udp(Family::Inet6)]
                .into_iter()
                .zip(udp)
                .filter_map(|(dump, may)| may.then_some(dump)),
        )
        .collect();
    [first.into_iter().map(tcp).collect(), rest]
}

/// A sock_diag socket, and what its last run took and found: the longest
/// lanes start first, and the next run's buffer is sized up front.
#[derive(Debug)]
pub(super) struct Lane {
    diag: SockDiag,
    last: Duration,
    last_found: usize,
}

impl Lane {
    pub fn new(diag: SockDiag) -> Self {
        Self {
            diag,
            last: Duration::ZERO,
            last_found: 0,
        }
    }
}

/// A lane's work in one snapshot, and where its sockets go. Made on the
/// calling thread: glibc gives each thread an arena of its own and keeps
/// what is freed in it, and a buffer grows in the arena it was made in.
#[derive(Debug)]
pub(super) struct Job<'a> {
    netns: u64,
    lane: &'a mut Lane,
    dumps: Vec<Dump>,
    sockets: Vec<NsSocket>,
    /// Whether the namespace's dump may be cut, which its histogram is for.
    cuttable: bool,
    histogram: Histogram,
}

impl<'a> Job<'a> {
    pub fn new(netns: u64, lane: &'a mut Lane, dumps: Vec<Dump>, cuttable: bool) -> Self {
        let sockets = Vec::with_capacity((lane.last_found + lane.last_found / 8).max(64));
        Self {
            netns,
            lane,
            dumps,
            sockets,
            cuttable,
            histogram: Histogram::default(),
        }
    }

    fn run(mut self) -> Outcome {
        let started = Instant::now();
        let mut failed = Vec::new();
        for &dump in &self.dumps {
            if let Err(err) = self.lane.diag.dump(dump, self.netns, &mut self.sockets) {
                failed.push((dump, err));
            }
        }
        if self.cuttable {
            self.histogram.add(&self.sockets);
        }
        self.lane.last = started.elapsed();
        self.lane.last_found = self.sockets.len();
        Outcome {
            netns: self.netns,
            sockets: self.sockets,
            failed,
            histogram: self.histogram,
        }
    }
}

/// What one lane found.
#[derive(Debug)]
pub(super) struct Outcome {
    pub netns: u64,
    pub sockets: Vec<NsSocket>,
    /// The dumps that failed, after every attempt.
    pub failed: Vec<(Dump, DumpError)>,
    /// Its TCP sockets by port, for the next snapshot's cut.
    pub histogram: Histogram,
}

/// Runs every job, on up to `threads` threads, the longest first.
pub(super) fn run(mut jobs: Vec<Job<'_>>, threads: usize) -> Vec<Outcome> {
    jobs.sort_by_key(|job| std::cmp::Reverse(job.lane.last));
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        return jobs.into_iter().map(Job::run).collect();
    }
    let queue = Mutex::new(jobs.into_iter());
    let next = || {
        queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next()
    };
    let drain = || {
        let mut outcomes = Vec::new();
        while let Some(job) = next() {
            outcomes.push(job.run());
        }
        outcomes
    };
    std::thread::scope(|scope| {
        // Threads the OS refuses are counted; the calling thread then takes
        // whatever the others leave, so no lane is lost.
        let workers: Vec<_> = (1..threads)
            .filter_map(|_| threads::spawn_scoped(scope, "portmon-lane", drain))
            .collect();
        let mut outcomes = drain();
        // A panic in a lane (none is known) loses that thread's lanes,
        // not the scrape.
        outcomes.extend(
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default()),
        );
        outcomes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sock_diag::End;

    const ALL_UDP: [bool; 2] = [true; 2];

    #[test]
    fn the_second_lane_takes_what_the_first_does_not() {
        let udp = [Dump::Udp(Family::Inet), Dump::Udp(Family::Inet6)];
        let all = Dump::Tcp {
            states: TCP_STATES,
            ports: Ports::All,
        };
        let bound = Dump::Tcp {
            states: TCP_BOUND_INACTIVE,
            ports: Ports::All,
        };
        assert_eq!(plan(None, false, false, ALL_UDP), [vec![all], udp.to_vec()]);
        assert_eq!(
            plan(None, true, false, ALL_UDP),
            [vec![all], [&[bound][..], &udp].concat()]
        );
        let cut = Cut {
            end: End::Remote,
            port: 32_767,
        };
        let [low, high] = cut.halves().map(|ports| Dump::Tcp {
            states: TCP_STATES,
            ports,
        });
        assert_eq!(
            plan(Some(cut), false, false, ALL_UDP),
            [vec![low], [&[high][..], &udp].concat()]
        );
        // With the bind table walked, no cut.
        assert_eq!(
            plan(Some(cut), true, false, ALL_UDP),
            plan(None, true, false, ALL_UDP)
        );
        // With the connections walked, listeners only, and no cut.
        let listeners = Dump::Tcp {
            states: TCP_LISTEN,
            ports: Ports::All,
        };
        assert_eq!(
            plan(Some(cut), false, true, ALL_UDP),
            [vec![listeners], udp.to_vec()]
        );
        assert_eq!(
            plan(None, true, true, ALL_UDP),
            [vec![listeners], [&[bound][..], &udp].concat()]
        );
    }
}
