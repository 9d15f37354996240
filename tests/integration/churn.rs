//! Namespaces by the thousand, made and dropped: portmon gives back their
//! kernel entries, drops their series after the grace period and keeps
//! counting the namespaces that stay exactly; and a namespace that only its
//! sockets hold is counted until they close. (Namespaces of unprivileged
//! users filling the maps: `unprivileged`.)

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use portmon_tests::{
    binds_outside_host, enter_fresh_netns, metric_value, serial, wait_until, Daemon, NamedNetns,
};

const LISTEN: &str = "127.0.0.1:17493";
/// Namespaces made and dropped, each binding, listening and connecting.
const CHURNED: usize = 5_000;
/// Threads making them, each in one namespace at a time.
const WORKERS: usize = 4;
/// Namespaces made per second, all threads together: each holds three
/// tables and a pool until the daemon sees it gone (a scan a second) and
/// its entries out of quarantine (a second more), so the maps hold the
/// entries of the namespaces of the last few seconds.
const RATE: f64 = 100.0;
/// Tables each short-lived namespace takes: binds, listens, connects.
const TABLES_EACH: f64 = 3.0;
/// Seconds from a namespace's end to its entries' return, at most: the
/// next look (half a second), the quarantine (a second) and the look after.
const RECLAIM_SECONDS: f64 = 2.5;
/// The port the long-lived namespace counts on, and the one every
/// short-lived namespace does.
const STAYING_PORT: u16 = 7_001;
const CHURN_PORT: u16 = 7_002;
const GRACE_SECONDS: u64 = 3;
/// Blocks of port counters: room for the tables of the namespaces of the
/// last `RECLAIM_SECONDS` at `RATE` (the tables are an eighth of it), twice
/// the default, as a host whose namespaces come and go this fast sets it.
const PORT_STATS_CAPACITY: &str = "8192";
const RSS_LIMIT: u64 = 64 << 20;

/// Binds a listener on `port` of the thread's namespace, connects to it
/// and closes both: one bind, one listen and one connect counted on the
/// port, one port the kernel picks for the connect.
fn bind_and_connect(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    drop(client);
    drop(listener);
}

/// What one sample of `/metrics` says of the kernel maps.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    tables: f64,
    blocks: f64,
    pools: f64,
    overflows: f64,
    churn_series: usize,
    /// Series naming a namespace other than the host's and the long-lived one.
    other_netns_series: usize,
}

fn sample(daemon: &Daemon, staying: &str) -> Sample {
    let text = daemon.scrape();
    let entries = |map: &str| metric_value(&text, "portmon_map_entries", &[("map", map)]).unwrap_or(0.0);
    let overflows: f64 = ["PORT_STATS", "PORT_TABLES", "POOL_KEYS"]
        .iter()
        .map(|map| metric_value(&text, "portmon_map_overflows_total", &[("map", map)]).unwrap_or(0.0))
        .sum::<f64>()
        + text
            .lines()
            .filter(|l| l.starts_with("portmon_port_overflow_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
    Sample {
        tables: entries("PORT_TABLES"),
        blocks: entries("PORT_STATS"),
        pools: entries("POOL_KEYS"),
        overflows,
        churn_series: text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("port=\"{CHURN_PORT}\"")))
            .count(),
        other_netns_series: text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("netns=\""))
            .filter(|l| !l.contains("netns=\"host\"") && !l.contains(&format!("netns=\"{staying}\"")))
            .count(),
    }
}

#[test]
fn five_thousand_namespaces_come_and_go_and_leave_nothing_behind() {
    let _serial = serial();
    let addr: SocketAddr = LISTEN.parse().unwrap();
    let grace = GRACE_SECONDS.to_string();
    let daemon = Daemon::start(
        addr,
        &[
            "--netns-grace-seconds",
            &grace,
            "--netns-label",
            "always",
            "--port-stats-capacity",
            PORT_STATS_CAPACITY,
            // Its per-namespace histograms must go with the rest.
            "--connect-search",
            "true",
        ],
    );
    let staying_netns = NamedNetns::create("churn");
    let made = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let (stayed, peak, peak_rss, before) = std::thread::scope(|scope| {
        // The long-lived namespace, named as an operator's would be (and
        // so found by the daemon's scan), counts all along.
        let staying = scope.spawn(|| {
            staying_netns.enter(|| {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) || n == 0 {
                    bind_and_connect(STAYING_PORT);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                n
            })
        });
        // Its port gets its series before the churn starts.
        assert!(
            wait_until(Duration::from_secs(10), || metric_value(
                &daemon.scrape(),
                "portmon_binds_total",
                &[("port", &STAYING_PORT.to_string())]
            )
            .is_some()),
            "the long-lived namespace's binds are not exported"
        );
        let before = sample(&daemon, &staying_netns.name);
        let churn_started = Instant::now();
        let made = &made;
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                scope.spawn(move || loop {
                    let i = made.fetch_add(1, Ordering::Relaxed);
                    if i >= CHURNED {
                        break;
                    }
                    // Paced: the i-th namespace not before its time.
                    let due = churn_started + Duration::from_secs_f64(i as f64 / RATE);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    enter_fresh_netns();
                    bind_and_connect(CHURN_PORT);
                })
            })
            .collect();
        let mut peak = Sample::default();
        let mut peak_rss = 0;
        let mut saw_churn_series = false;
        while workers.iter().any(|w| !w.is_finished()) {
            let now = sample(&daemon, &staying_netns.name);
            peak.tables = peak.tables.max(now.tables);
            peak.blocks = peak.blocks.max(now.blocks);
            peak.pools = peak.pools.max(now.pools);
            peak.overflows = peak.overflows.max(now.overflows);
            saw_churn_series |= now.churn_series > 0;
            peak_rss = peak_rss.max(daemon.rss());
            std::thread::sleep(Duration::from_millis(500));
        }
        for w in workers {
            w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
        assert!(
            saw_churn_series,
            "no short-lived namespace's series was ever seen"
        );
        done.store(true, Ordering::Relaxed);
        let stayed = staying.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (stayed, peak, peak_rss, before)
    });
    let churn_seconds = started.elapsed().as_secs_f64();
    let exact = |text: &str| {
        let port = STAYING_PORT.to_string();
        let binds = metric_value(text, "portmon_binds_total", &[("port", &port)]);
        let connects = metric_value(text, "portmon_connects_total", &[("port", &port)]);
        (binds, connects)
    };
    let want = (Some(stayed as f64), Some(stayed as f64));
    let text = daemon.scrape();
    let staying_lines = |text: &str| -> Vec<String> {
        let port = format!("port=\"{STAYING_PORT}\"");
        text.lines()
            .filter(|l| l.contains(&port) || l.contains("overflow"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        exact(&text),
        want,
        "the long-lived namespace's counts: {:#?}",
        staying_lines(&text)
    );
    // Past the grace period (and a reclaim or two), the short-lived
    // namespaces have left everything.
    let settled = wait_until(Duration::from_secs(GRACE_SECONDS + 20), || {
        let now = sample(&daemon, &staying_netns.name);
        now.churn_series == 0
            && now.other_netns_series <= before.other_netns_series
            && now.tables <= before.tables
            && now.blocks <= before.blocks
    });
    let after = sample(&daemon, &staying_netns.name);
    let text = daemon.scrape();
    let rss = daemon.rss();
    println!(
        "churn: {CHURNED} namespaces by {WORKERS} threads at {RATE}/s in {churn_seconds:.1} s; long-lived \
         namespace counted {stayed} binds and connects; PORT_TABLES {} before, {} at peak, {} after; \
         PORT_STATS blocks {} before, {} at peak, {} after; POOL_KEYS {} at peak; overflows {}; \
         daemon RSS {:.1} MiB at peak, {:.1} MiB after",
        before.tables,
        peak.tables,
        after.tables,
        before.blocks,
        peak.blocks,
        after.blocks,
        peak.pools,
        peak.overflows,
        peak_rss as f64 / (1 << 20) as f64,
        rss as f64 / (1 << 20) as f64,
    );
    assert!(
        settled,
        "short-lived namespaces left entries or series behind: {after:?}"
    );
    assert_eq!(exact(&text), want, "the long-lived namespace's counts, after");
    assert_eq!(peak.overflows, 0.0, "counts overflowed");
    // Bounded by the namespaces alive or gone within a reclaim's reach.
    let bound = before.tables + TABLES_EACH * RATE * RECLAIM_SECONDS + TABLES_EACH * WORKERS as f64;
    assert!(
        peak.tables <= bound,
        "{} tables at peak, over {bound}",
        peak.tables
    );
    assert!(peak_rss.max(rss) < RSS_LIMIT, "daemon RSS {peak_rss} bytes");
}

/// The port a namespace held only by its sockets listens on.
const HELD_PORT: u16 = 7_003;

/// The binds counted on `HELD_PORT` outside the host's namespace, or `None`
/// once no series names them.
fn held_binds(daemon: &Daemon) -> Option<f64> {
    binds_outside_host(&daemon.scrape(), HELD_PORT)
}

/// A descriptor of the network namespace `socket` lives in (`SIOCGSKNS`).
fn netns_of(socket: &TcpListener) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: an ioctl on an open socket that returns a new descriptor.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS) };
    assert!(fd >= 0, "SIOCGSKNS: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor the kernel just gave us.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[test]
fn a_namespace_held_only_by_its_sockets_keeps_its_counts_until_they_close() {
    let _serial = serial();
    let addr: SocketAddr = LISTEN.parse().unwrap();
    let daemon = Daemon::start(addr, &["--netns-grace-seconds", "1", "--netns-label", "always"]);
    // Made on a thread that then ends: no process is in the namespace and
    // no mount names it; only its sockets hold it.
    let (listener, connection) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_fresh_netns();
                let listener = TcpListener::bind(("127.0.0.1", HELD_PORT)).expect("bind");
                let client = TcpStream::connect(("127.0.0.1", HELD_PORT)).expect("connect");
                let accepted = listener.accept().expect("accept").0;
                (listener, (client, accepted))
            })
            .join()
            .expect("the namespace's thread")
    });
    assert!(
        wait_until(Duration::from_secs(10), || held_binds(&daemon) == Some(1.0)),
        "the bind was not counted: {:?}",
        held_binds(&daemon)
    );
    // Reclaims come every half second while namespaces come and go, every
    // five seconds otherwise: several pass, each past the grace period.
    std::thread::sleep(Duration::from_secs(12));
    // The port bound again there: counted on top of the first bind, in the
    // namespace's own entries, which a namespace taken for gone would have
    // given back with its count.
    let netns = netns_of(&listener);
    drop(listener);
    let path = std::path::PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&netns)
    ));
    portmon::kernel::netns::run_in(&path, || {
        drop(TcpListener::bind(("127.0.0.1", HELD_PORT)).expect("bind again"));
    })
    .expect("enter the namespace");
    drop(netns);
    assert!(
        wait_until(Duration::from_secs(10), || held_binds(&daemon) == Some(2.0)),
        "a namespace its open sockets hold was taken for gone: binds {:?}",
        held_binds(&daemon)
    );
    // Closed, the namespace goes, and its series after the grace period.
    drop(connection);
    assert!(
        wait_until(Duration::from_secs(20), || held_binds(&daemon).is_none()),
        "the namespace's series outlived it: {:?}",
        held_binds(&daemon)
    );
}
