//! How long TCP connects spend finding a local port
//! (`portmon_connect_port_search_seconds`): every connect counted once,
//! a search that found no port included, and the time rising as the pool
//! fills, before any connect fails.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
};

use portmon::kernel::bpf::{connect_search::SearchTimes, LoadOptions};
use portmon_common::SEARCH_BUCKETS;
use portmon_tests::{in_fresh_netns, serial, write_sysctl, Monitor};

use crate::exhaustion::{connect_until_refused, Server};

/// 5,000 ports, 40000–44999: enough that a search over a nearly full pool
/// walks hundreds of them.
const POOL: usize = 5000;
/// Held ports let go again, evenly spread: the free ports a search over
/// the nearly full pool has to find.
const FREED: usize = 25;
/// Connects timed per phase.
const TIMED: usize = 300;

/// Closes a connection with a reset: the port is free at once, with no
/// TIME_WAIT to hold it.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// `TIMED` connects to `to`, each reset at once so that the pool stays as it is.
fn timed_connects(to: SocketAddr) {
    for _ in 0..TIMED {
        reset(TcpStream::connect(to).expect("connect while ports are left"));
    }
}

/// What `after` counted beyond `before`.
fn since(before: &SearchTimes, after: &SearchTimes) -> SearchTimes {
    let mut d = after.clone();
    for (n, b) in d.buckets.iter_mut().zip(before.buckets) {
        *n -= b;
    }
    d.sum_ns -= before.sum_ns;
    d
}

/// The bucket holding the median search.
fn median_bucket(t: &SearchTimes) -> usize {
    let half = t.count().div_ceil(2);
    let mut seen = 0;
    t.buckets
        .iter()
        .position(|&n| {
            seen += n;
            seen >= half
        })
        .unwrap_or(SEARCH_BUCKETS - 1)
}

fn mean_ns(t: &SearchTimes) -> f64 {
    t.sum_ns as f64 / t.count().max(1) as f64
}

/// Raises the open-descriptor limit to what the full pool needs (two
/// descriptors per port), past the hard one where root may (a test
/// guest's init leaves 4,096), else to the hard one.
fn raise_descriptor_limit() {
    let needed = (3 * POOL) as u64;
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_max < needed {
            let raised = libc::rlimit {
                rlim_cur: needed,
                rlim_max: needed,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return;
            }
        }
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        assert!(
            limit.rlim_cur >= needed,
            "hard descriptor limit {}",
            limit.rlim_max
        );
    }
}

#[test]
fn the_port_search_takes_longer_as_the_pool_fills() {
    let _serial = serial();
    raise_descriptor_limit();
    let monitor = Monitor::attach_with(LoadOptions {
        connect_search: true,
        ..LoadOptions::default()
    });
    in_fresh_netns(|ns| {
        write_sysctl("net/ipv4/ip_local_port_range", "40000 44999");
        write_sysctl("net/ipv4/tcp_tw_reuse", "0");
        let server = Server::start(5000);
        let read = || {
            monitor.connect_search(ns.cookie).unwrap_or(SearchTimes {
                netns: ns.cookie,
                buckets: [0; SEARCH_BUCKETS],
                sum_ns: 0,
            })
        };

        let start = read();
        timed_connects(server.addr);
        let empty_done = read();
        let empty = since(&start, &empty_done);
        assert_eq!(
            empty.count(),
            TIMED as u64,
            "each connect counted once: {empty:?}"
        );

        let (mut held, err) = connect_until_refused(server.addr, POOL);
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(held.len(), POOL, "every port of the pool");
        let filled = read();
        let filling = since(&empty_done, &filled);
        assert_eq!(
            filling.count(),
            POOL as u64 + 1,
            "every connect, and the search that found no port: {filling:?}"
        );
        for i in (0..FREED).rev() {
            reset(held.swap_remove(i * (POOL / FREED)));
        }

        let nearly_full_start = read();
        timed_connects(server.addr);
        let nearly_full = since(&nearly_full_start, &read());
        assert_eq!(nearly_full.count(), TIMED as u64, "{nearly_full:?}");

        let (e, f) = (median_bucket(&empty), median_bucket(&nearly_full));
        eprintln!(
            "port search, empty pool: median bucket {e}, mean {:.0} ns; {FREED} of {POOL} ports free: median bucket {f}, mean {:.0} ns",
            mean_ns(&empty),
            mean_ns(&nearly_full)
        );
        // A search that walks a few hundred taken ports costs several times
        // one that takes the first port it tries (about eight times, three
        // buckets, on a two-core VM): two buckets for the median, and twice
        // the mean, leave room for a busy machine, and fail a flat
        // histogram.
        assert!(
            f >= e + 2,
            "median bucket {e} empty, {f} nearly full: {empty:?} {nearly_full:?}"
        );
        assert!(
            mean_ns(&nearly_full) > 2.0 * mean_ns(&empty),
            "{empty:?} {nearly_full:?}"
        );
        drop(held);
        drop(server);
    });
}

#[test]
fn nothing_is_timed_unless_asked_for() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let server = Server::start(5000);
        timed_connects(server.addr);
        assert_eq!(monitor.connect_search(ns.cookie), None);
    });
}
