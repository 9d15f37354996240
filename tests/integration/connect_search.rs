//! How long TCP connects spend finding a local port
//! (`portmon_connect_port_search_seconds`): every connect counted once,
//! a search that found no port included, and the time rising as the pool
//! fills, before any connect fails.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    os::fd::AsFd as _,
};

use portmon::kernel::bpf::{connect_search::SearchTimes, LoadOptions};
use portmon_common::SEARCH_BUCKETS;
use portmon_tests::{in_fresh_netns, reset_on_close, serial, write_sysctl, Monitor};

use crate::exhaustion::Server;

/// 5,000 ports, 40000–44999: enough that a search over a nearly full pool
/// walks hundreds of them.
const POOL: usize = 5000;
/// Held ports let go again, evenly spread: the free ports a search over
/// the nearly full pool has to find.
const FREED: usize = 25;
/// Connects made before the server closes its side: the descriptors the
/// test holds at most.
const BATCH: usize = 250;
/// Connects timed per phase.
const TIMED: usize = 300;

/// `TIMED` connects to `to`, each reset at once so that the pool stays as it is.
fn timed_connects(to: SocketAddr) {
    for _ in 0..TIMED {
        let stream = TcpStream::connect(to).expect("connect while ports are left");
        reset_on_close(stream.as_fd());
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

/// Connects to `server` until the kernel refuses: every port of the pool
/// taken, most by a TIME_WAIT (which holds its port with no descriptor, so
/// the test fits any descriptor limit), and one in every `POOL / FREED` by
/// a connection kept open, to be reset later. Returns the kept ones, how
/// many connected, and the refusal.
fn fill_pool(server: &Server) -> (Vec<TcpStream>, usize, std::io::Error) {
    let mut kept = Vec::new();
    let mut connected = 0;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let mut refused = None;
        while batch.len() < BATCH {
            match TcpStream::connect(server.addr) {
                Ok(stream) => batch.push(stream),
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            }
        }
        for stream in batch {
            if connected % (POOL / FREED) == 0 {
                kept.push(stream);
            }
            // Else closed here first, so that this side, not the
            // server's, keeps the TIME_WAIT once the server closes.
            connected += 1;
        }
        server.close_accepted();
        if let Some(err) = refused {
            return (kept, connected, err);
        }
        assert!(connected <= POOL, "more than {POOL} connects");
    }
}

#[test]
fn the_port_search_takes_longer_as_the_pool_fills() {
    let _serial = serial();
    let monitor = Monitor::attach_with(LoadOptions {
        connect_search: true,
        ..LoadOptions::default()
    });
    in_fresh_netns(|ns| {
        write_sysctl("net/ipv4/ip_local_port_range", "40000 44999");
        write_sysctl("net/ipv4/tcp_tw_reuse", "0");
        // A small guest's default is below the pool.
        write_sysctl("net/ipv4/tcp_max_tw_buckets", "20000");
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

        let (kept, connected, err) = fill_pool(&server);
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(connected, POOL, "every port of the pool");
        let filled = read();
        let filling = since(&empty_done, &filled);
        assert_eq!(
            filling.count(),
            POOL as u64 + 1,
            "every connect, and the search that found no port: {filling:?}"
        );
        assert_eq!(kept.len(), FREED);
        for stream in kept {
            reset_on_close(stream.as_fd());
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
