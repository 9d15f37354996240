//! Ephemeral-port exhaustion, exactly as the kernel behaves: in named
//! network namespaces with a narrowed pool (100 ports, 10 reserved), the
//! real daemon's numbers are checked against what the kernel allowed.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use portmon_tests::{
    dumps_bound_inactive, metric_value, serial, skipped, wait_until, write_sysctl, Daemon, NamedNetns,
    Prometheus, PROMETHEUS_PATIENCE,
};

/// 100 ports, 40000–40099, of which 40000–40009 are reserved.
pub(crate) const POOL: u32 = 90;

/// Narrows the calling thread's namespace's pool to `POOL` ports.
pub(crate) fn narrow_pool() {
    write_sysctl("net/ipv4/ip_local_port_range", "40000 40099");
    write_sysctl("net/ipv4/ip_local_reserved_ports", "40000-40009");
    // TIME_WAIT sockets on loopback are otherwise taken over by connect().
    write_sysctl("net/ipv4/tcp_tw_reuse", "0");
}

/// Waits until `name{labels}` reads `want` in the daemon's metrics; returns the last value.
pub(crate) fn wait_metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
    let mut last = None;
    wait_until(Duration::from_secs(10), || {
        last = metric_value(&daemon.scrape(), name, labels);
        last == Some(want)
    });
    last
}

/// Connects to `to` until the kernel refuses; returns the streams and the error.
pub(crate) fn connect_until_refused(to: SocketAddr, most: usize) -> (Vec<TcpStream>, std::io::Error) {
    let mut streams = Vec::new();
    loop {
        match TcpStream::connect(to) {
            Ok(s) => streams.push(s),
            Err(err) => return (streams, err),
        }
        assert!(streams.len() <= most, "more than {most} connects to {to}");
    }
}

/// A listener on `port` that accepts everything on a thread of the same
/// namespace, keeping the accepted sockets until it is dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (keep, stopped) = (accepted.clone(), stop.clone());
        // A thread made here starts in this thread's namespace.
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => keep.lock().unwrap().push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the accepted sockets (after their clients closed, so the
    /// clients keep the TIME_WAIT).
    pub(crate) fn close_accepted(&self) {
        // Accepts still queued are taken first, so that none stays open.
        std::thread::sleep(Duration::from_millis(50));
        self.accepted.lock().unwrap().clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("comm")
        .trim()
        .to_owned()
}

fn labels<'a>(netns: &'a str, proto: &'a str) -> [(&'a str, &'a str); 2] {
    [("netns", netns), ("proto", proto)]
}

#[test]
fn connects_to_one_destination_get_exactly_the_pool_then_one_eaddrnotavail() {
    let _serial = serial();
    let ns = NamedNetns::create("exhaust");
    ns.enter(narrow_pool);
    let daemon = Daemon::start("127.0.0.1:17461".parse().unwrap(), &[]);
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/portmon.rules.yml");
    let prometheus = Prometheus::start("127.0.0.1:19092".parse().unwrap(), daemon.addr, &[rules]);
    let netns = ns.name.as_str();
    assert_eq!(
        wait_metric(
            &daemon,
            "portmon_ephemeral_pool_ports",
            &[("netns", netns)],
            f64::from(POOL)
        ),
        Some(f64::from(POOL))
    );

    ns.enter(|| {
        let server = Server::start(5000);
        let (clients, err) = connect_until_refused(server.addr, POOL as usize);
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(clients.len() as u32, POOL, "every usable port, no more");

        let tcp_connect = [("netns", netns), ("proto", "tcp"), ("op", "connect")];
        assert_eq!(
            wait_metric(
                &daemon,
                "portmon_ephemeral_exhaustion_errors_total",
                &tcp_connect,
                1.0
            ),
            Some(1.0),
            "one refused connect, one error"
        );
        let body = daemon.scrape();
        let value = |name: &str, extra: &[(&str, &str)]| metric_value(&body, name, extra);
        assert_eq!(
            value("portmon_ephemeral_utilization_ratio", &tcp_connect),
            Some(1.0)
        );
        assert_eq!(
            value("portmon_ephemeral_ports_in_use", &labels(netns, "tcp")),
            Some(f64::from(POOL))
        );
        assert_eq!(
            value("portmon_ephemeral_bound_ports", &labels(netns, "tcp")),
            Some(0.0)
        );
        assert_eq!(
            value(
                "portmon_ephemeral_destination_utilization_ratio",
                &[
                    ("netns", netns),
                    ("remote_addr", "127.0.0.1"),
                    ("remote_port", "5000")
                ]
            ),
            Some(1.0)
        );
        for (proto, op) in [("tcp", "bind"), ("udp", "connect"), ("udp", "bind")] {
            let other = [("netns", netns), ("proto", proto), ("op", op)];
            assert_eq!(
                value("portmon_ephemeral_exhaustion_errors_total", &other),
                Some(0.0),
                "{proto} {op}"
            );
        }

        let (_, failures) = daemon.get("/api/v1/failures").expect("failures");
        let failures: Vec<serde_json::Value> = serde_json::from_str(&failures).expect("json");
        let ours: Vec<&serde_json::Value> = failures
            .iter()
            .filter(|f| f["exhaustion"] == "connect" && f["port"] == 5000)
            .collect();
        assert_eq!(ours.len(), 1, "{failures:#?}");
        assert_eq!(ours[0]["pid"], std::process::id());
        assert_eq!(ours[0]["comm"], thread_comm().as_str());
        assert_eq!(ours[0]["errno"], "EADDRNOTAVAIL");

        // The rule file, evaluated by a real Prometheus scraping the daemon.
        let alert = format!(
            "ALERTS{{alertname=\"PortmonEphemeralPortsExhausted\",alertstate=\"firing\",severity=\"critical\",netns=\"{netns}\",proto=\"tcp\",op=\"connect\"}}"
        );
        // Generous: under `cargo xtask vm-test` Prometheus runs emulated and
        // evaluates its rules many times slower; the wait ends when it fires.
        let waiting = std::time::Instant::now();
        let fired = prometheus.wait_for(&alert, 1.0, PROMETHEUS_PATIENCE);
        assert_eq!(fired, Some(1.0), "the critical alert did not fire");
        eprintln!("the critical alert fired after {:?}", waiting.elapsed());
        let high = format!(
            "ALERTS{{alertname=\"PortmonEphemeralPoolCritical\",netns=\"{netns}\",proto=\"tcp\",op=\"connect\"}}"
        );
        // Waited for too: under TCG a scrape can outlast the 1 s interval,
        // and a missed sample sends a pending alert back to inactive.
        assert_eq!(
            prometheus.wait_for(&high, 1.0, PROMETHEUS_PATIENCE),
            Some(1.0),
            "the pool at 100% is pending or firing"
        );
        drop(clients);
    });
}

#[test]
fn two_destinations_share_the_pool_and_time_wait_holds_ports_until_it_expires() {
    let _serial = serial();
    let ns = NamedNetns::create("share");
    ns.enter(narrow_pool);
    let daemon = Daemon::start("127.0.0.1:17462".parse().unwrap(), &[]);
    let netns = ns.name.as_str();
    let tcp_connect = [("netns", netns), ("proto", "tcp"), ("op", "connect")];
    let tcp_bind = [("netns", netns), ("proto", "tcp"), ("op", "bind")];
    let destination = |port: &'static str| {
        [
            ("netns", netns),
            ("remote_addr", "127.0.0.1"),
            ("remote_port", port),
        ]
    };

    ns.enter(|| {
        let (a, b) = (Server::start(5001), Server::start(5002));
        let mut clients = Vec::new();
        for _ in 0..POOL / 2 {
            clients.push(TcpStream::connect(a.addr).expect("connect a"));
            clients.push(TcpStream::connect(b.addr).expect("connect b"));
        }
        // As many connections as the pool, and room to spare: one port
        // serves both destinations.
        let half = f64::from(POOL / 2) / f64::from(POOL);
        assert_eq!(
            wait_metric(&daemon, "portmon_ephemeral_utilization_ratio", &tcp_connect, half),
            Some(half)
        );
        let mut ports: Vec<u16> = clients.iter().map(|c| c.local_addr().unwrap().port()).collect();
        ports.sort_unstable();
        ports.dedup();
        let body = daemon.scrape();
        assert_eq!(
            metric_value(&body, "portmon_ephemeral_ports_in_use", &labels(netns, "tcp")),
            Some(ports.len() as f64),
            "distinct local ports, as the kernel handed them out"
        );
        assert_eq!(
            metric_value(&body, "portmon_ephemeral_utilization_ratio", &tcp_bind),
            Some(ports.len() as f64 / f64::from(POOL))
        );
        for port in ["5001", "5002"] {
            assert_eq!(
                metric_value(
                    &body,
                    "portmon_ephemeral_destination_utilization_ratio",
                    &destination(port)
                ),
                Some(half),
                "destination {port}"
            );
        }

        // The second destination still has the rest of the pool.
        let (more, err) = connect_until_refused(a.addr, POOL as usize);
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(more.len() as u32, POOL / 2, "destination a has the other half");
        clients.extend(more);
        assert_eq!(
            wait_metric(&daemon, "portmon_ephemeral_utilization_ratio", &tcp_connect, 1.0),
            Some(1.0)
        );

        // Closed first by the client, each connection leaves a TIME_WAIT
        // that keeps its 4-tuple: the kernel still refuses, and so the
        // ratio stays up.
        drop(clients);
        a.close_accepted();
        b.close_accepted();
        let err = TcpStream::connect(a.addr).expect_err("TIME_WAIT holds every port for a");
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(
            metric_value(
                &daemon.scrape(),
                "portmon_ephemeral_utilization_ratio",
                &tcp_connect
            ),
            Some(1.0)
        );
        let c = Server::start(5003);
        let other = TcpStream::connect(c.addr).expect("another destination is free");

        // TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN); then the ports are free.
        let freed = wait_until(Duration::from_secs(75), || {
            metric_value(
                &daemon.scrape(),
                "portmon_ephemeral_utilization_ratio",
                &tcp_connect,
            )
            .is_some_and(|r| r < 0.05)
        });
        assert!(freed, "the ratio did not fall when TIME_WAIT expired");
        TcpStream::connect(a.addr).expect("after TIME_WAIT the ports are free again");
        drop(other);
    });
}

/// bind(0) on a fresh TCP socket, without listen or connect.
fn tcp_bind_zero() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a sockaddr_in we own; the fd is owned below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        let rc = libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

#[test]
fn bind_zero_and_udp_connect_exhaust_the_pool_exclusively() {
    let _serial = serial();
    let ns = NamedNetns::create("exclusive");
    ns.enter(narrow_pool);
    let daemon = Daemon::start("127.0.0.1:17463".parse().unwrap(), &[]);
    let netns = ns.name.as_str();
    let bound_inactive = dumps_bound_inactive();

    ns.enter(|| {
        let mut bound = Vec::new();
        let err = loop {
            match tcp_bind_zero() {
                Ok(fd) => bound.push(fd),
                Err(err) => break err,
            }
            assert!(bound.len() <= POOL as usize, "more bind(0)s than ports");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
        assert_eq!(bound.len() as u32, POOL);
        // The failed bind is settled at the socket's next event: its close,
        // which happened as tcp_bind_zero returned.
        let tcp = |op| [("netns", netns), ("proto", "tcp"), ("op", op)];
        assert_eq!(
            wait_metric(
                &daemon,
                "portmon_ephemeral_exhaustion_errors_total",
                &tcp("bind"),
                1.0
            ),
            Some(1.0)
        );
        // The pool's fill counts sockets bound and idle only where the
        // kernel dumps them (README: "Ephemeral-port exhaustion").
        if bound_inactive {
            let body = daemon.scrape();
            assert_eq!(
                metric_value(&body, "portmon_ephemeral_bound_ports", &labels(netns, "tcp")),
                Some(f64::from(POOL)),
                "sockets bound and idle hold their ports (sock_diag's bound-inactive dump)"
            );
            assert_eq!(
                metric_value(&body, "portmon_ephemeral_utilization_ratio", &tcp("bind")),
                Some(1.0)
            );
            assert_eq!(
                metric_value(&body, "portmon_ephemeral_utilization_ratio", &tcp("connect")),
                Some(1.0),
                "bound ports are out of connect()'s reach too"
            );
        } else {
            skipped(
                "the fill of a pool held by bound and idle TCP sockets: this kernel's sock_diag \
                 does not dump them (TCP_BOUND_INACTIVE, Linux 6.7)",
            );
        }
        let refused = TcpStream::connect(("127.0.0.1", 7)).expect_err("no port for connect either");
        assert_eq!(refused.kind(), ErrorKind::AddrNotAvailable, "{refused}");
        drop(bound);

        let mut udp = Vec::new();
        let err = loop {
            match crate::counting::raw_udp_connect([127, 0, 0, 1], 53) {
                // SAFETY: a descriptor raw_udp_connect just opened.
                Ok(fd) => udp.push(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(err) => break err,
            }
            assert!(udp.len() <= POOL as usize, "more UDP auto-binds than ports");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{err}");
        assert_eq!(udp.len() as u32, POOL);
        let udp_connect = [("netns", netns), ("proto", "udp"), ("op", "connect")];
        assert_eq!(
            wait_metric(
                &daemon,
                "portmon_ephemeral_exhaustion_errors_total",
                &udp_connect,
                1.0
            ),
            Some(1.0)
        );
        let body = daemon.scrape();
        assert_eq!(
            metric_value(&body, "portmon_ephemeral_ports_in_use", &labels(netns, "udp")),
            Some(f64::from(POOL))
        );
        assert_eq!(
            metric_value(&body, "portmon_ephemeral_utilization_ratio", &udp_connect),
            Some(1.0)
        );
        drop(udp);
    });
}

#[test]
fn the_pool_follows_sysctl_changes_while_the_daemon_runs() {
    let _serial = serial();
    let ns = NamedNetns::create("sysctl");
    let daemon = Daemon::start("127.0.0.1:17464".parse().unwrap(), &[]);
    let pool = [("netns", ns.name.as_str())];
    for (range, reserved, want) in [
        ("40000 40099", "", 100.0),
        ("40000 40099", "40000-40009,40050", 89.0),
        ("41000 41999", "40000-40009,40050", 1000.0),
        ("41000 41999", "41000-41499", 500.0),
    ] {
        ns.enter(|| {
            write_sysctl("net/ipv4/ip_local_port_range", range);
            write_sysctl("net/ipv4/ip_local_reserved_ports", reserved);
        });
        assert_eq!(
            wait_metric(&daemon, "portmon_ephemeral_pool_ports", &pool, want),
            Some(want),
            "range {range}, reserved {reserved:?}"
        );
    }
}
