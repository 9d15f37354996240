//! Every query of the dashboard and of the rules, against a live Prometheus
//! scraping a live daemon: one whose test namespace runs out of ephemeral
//! ports, and one fresh, before any event.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{FromRawFd as _, OwnedFd},
    sync::mpsc,
    time::Duration,
};

use portmon_tests::{http_get, serial, write_sysctl, Daemon, NamedNetns, Prometheus};
use serde_json::Value;

use super::{
    dashboard, deploy_dir,
    promql::{check_variables, dashboard_queries, loaded_rules, poll, Query},
};

const DAEMON: &str = "127.0.0.1:17490";
/// A second target of the job where nothing listens: `up` is 0 there.
const DEAD_TARGET: &str = "127.0.0.1:17491";
const PROMETHEUS: &str = "127.0.0.1:19095";
/// The daemon and Prometheus of the test without events.
const FRESH_DAEMON: &str = "127.0.0.1:17492";
const FRESH_PROMETHEUS: &str = "127.0.0.1:19096";

/// A listener port with an IANA service name (http-alt), in the test's namespace.
const SERVICE_PORT: u16 = 8080;
/// A UDP listener (mdns).
const UDP_PORT: u16 = 5353;
/// A TCP listener inside the namespace's ephemeral range (40000-40009).
const IN_RANGE_PORT: u16 = 40005;

/// Alerts no workload can raise on a healthy daemon: for these the live
/// test checks that every metric they read has series, not that they fire.
const HEALTHY_SILENT_ALERTS: &[&str] = &[
    "PortmonTargetAbsent",
    "PortmonProgramNotAttached",
    "PortmonEventsDropped",
    "PortmonMapOverflow",
    "PortmonMapNearlyFull",
    "PortmonInventoryErrors",
    "PortmonConfigReloadFailed",
];

/// Sockets a workload keeps open until dropped.
struct Workload {
    _keep: Vec<Box<dyn Send>>,
}

/// In a namespace whose pool is 10 ports: a TCP and a UDP listener, one
/// more TCP listener inside the pool, UDP binds past the namespace's share
/// of port blocks, a bind
/// to the taken TCP port (EADDRINUSE), a bind-before-connect, connects to
/// one destination until no port is left (EADDRNOTAVAIL), and a bind(0)
/// that finds none (EADDRINUSE). Says when the connect failed on `failed`,
/// and waits on `filed`.
fn exhaust_the_pool(failed: mpsc::Sender<()>, filed: mpsc::Receiver<()>) -> Workload {
    write_sysctl("net/ipv4/ip_local_port_range", "40000 40009");
    let mut keep: Vec<Box<dyn Send>> = Vec::new();
    let listener = TcpListener::bind(("127.0.0.1", SERVICE_PORT)).expect("listen");
    let udp = UdpSocket::bind(("127.0.0.1", UDP_PORT)).expect("udp bind");
    // A listener inside the pool: the hazards row and its alert have data.
    let in_range = TcpListener::bind(("127.0.0.1", IN_RANGE_PORT)).expect("listen in the pool");
    // UDP binds in more 64-port blocks than a namespace's share of one
    // table: the last ones fold into their class (PortmonPortCountsFolded).
    let share =
        (portmon_common::capacity::BLOCKS_PER_NAMESPACE / portmon_common::capacity::HOST_ENTRIES) as u16;
    for k in 0..share + 5 {
        drop(UdpSocket::bind(("127.0.0.1", 1024 + 64 * k)).expect("a bind in a block of its own"));
    }
    let conflict = TcpListener::bind(("127.0.0.1", SERVICE_PORT)).expect_err("the port is taken");
    assert_eq!(conflict.kind(), ErrorKind::AddrInUse, "{conflict}");
    keep.push(Box::new(bind_zero_then_connect(SERVICE_PORT)));
    let mut clients = Vec::new();
    let err = loop {
        match TcpStream::connect(("127.0.0.1", SERVICE_PORT)) {
            Ok(client) => clients.push(client),
            Err(err) => break err,
        }
        assert!(clients.len() < 10, "more connects than local ports");
    };
    assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
    // The daemon finds the namespace of this failure through the thread
    // (the kernel does not say): this thread lives until it has.
    failed.send(()).expect("signal the failed connect");
    filed.recv().expect("wait for the daemon to file it");
    let err = TcpListener::bind("127.0.0.1:0").expect_err("no port left for bind(0)");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "bind(0): {err}");
    keep.push(Box::new(clients));
    keep.push(Box::new(listener));
    keep.push(Box::new(udp));
    keep.push(Box::new(in_range));
    Workload { _keep: keep }
}

/// A TCP socket bound to 127.0.0.1:0, then connected to 127.0.0.1:`port`.
fn bind_zero_then_connect(port: u16) -> OwnedFd {
    let sockaddr = |port: u16| {
        // SAFETY: sockaddr_in is plain data; zero is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        sin
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) returns a new descriptor we then own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let local = sockaddr(0);
    // SAFETY: a valid sockaddr_in and its length.
    let rc = unsafe { libc::bind(fd, (&raw const local).cast(), len) };
    assert_eq!(rc, 0, "bind(0): {}", std::io::Error::last_os_error());
    let remote = sockaddr(port);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&raw const remote).cast(), len) };
    assert_eq!(
        rc,
        0,
        "connect after bind(0): {}",
        std::io::Error::last_os_error()
    );
    socket
}

#[test]
fn every_dashboard_and_rule_query_returns_data_from_a_live_daemon() {
    let _serial = serial();
    let ns = NamedNetns::create("deploy");
    // The opt-in families have panels too.
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &["--connect-search", "true"]);
    let rules = deploy_dir().join("prometheus/portmon.rules.yml");
    let dead: SocketAddr = DEAD_TARGET.parse().unwrap();
    let prometheus = Prometheus::start_scraping(PROMETHEUS.parse().unwrap(), &[daemon.addr, dead], &[rules]);
    let (failed_tx, failed_rx) = mpsc::channel();
    let (filed_tx, filed_rx) = mpsc::channel();
    let work = std::thread::scope(|scope| {
        let worker = scope.spawn(|| ns.enter(move || exhaust_the_pool(failed_tx, filed_rx)));
        if failed_rx.recv().is_ok() {
            let listed = portmon_tests::wait_until(Duration::from_secs(10), || {
                let Ok((200, body)) = http_get(daemon.addr, "/api/v1/failures") else {
                    return false;
                };
                let failures: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
                failures.iter().any(|f| {
                    f["pid"] == std::process::id()
                        && f["port"] == SERVICE_PORT
                        && f["errno"].to_string().to_uppercase().contains("ADDRNOTAVAIL")
                })
            });
            assert!(listed, "the daemon never listed the EADDRNOTAVAIL connect");
            filed_tx.send(()).expect("let the workload go on");
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });

    let d = dashboard();
    let mut queries = dashboard_queries(&d);
    for rule in &loaded_rules(&prometheus) {
        let name = rule["name"].as_str().unwrap_or_default();
        queries.push(Query {
            source: format!("{} rule {name}", rule["type"]),
            promql: rule["query"].as_str().unwrap_or_default().to_owned(),
            expect_data: !HEALTHY_SILENT_ALERTS.contains(&name),
        });
    }
    poll(&prometheus, &queries, DAEMON, Some(&ns.name));
    for rule in loaded_rules(&prometheus) {
        assert_eq!(
            rule["health"], "ok",
            "rule {} evaluates with an error: {}",
            rule["name"], rule["lastError"]
        );
    }
    check_variables(&prometheus, &d, DAEMON, &ns.name);
    drop(work);
}

/// Error counters and bind-before-connect exist only from their first event
/// (their labels name a port or a command): on a daemon that has seen none,
/// every panel must still show a number, not "No data".
#[test]
fn every_dashboard_query_returns_data_from_a_fresh_daemon_with_no_events() {
    let _serial = serial();
    // The opt-in families have panels too; Prometheus's scrapes are TCP
    // connects of the host's namespace.
    let daemon = Daemon::start(FRESH_DAEMON.parse().unwrap(), &["--connect-search", "true"]);
    let prometheus = Prometheus::start_scraping(FRESH_PROMETHEUS.parse().unwrap(), &[daemon.addr], &[]);
    let (_, metrics) = http_get(daemon.addr, "/metrics").expect("scrape the fresh daemon");
    for absent in [
        "portmon_bind_errors_total{",
        "portmon_connect_errors_total{",
        "portmon_bind_before_connect_total{",
    ] {
        // Another process's failure would make this test prove nothing.
        assert!(
            !metrics.contains(absent),
            "{absent} already has series: the host is not quiet"
        );
    }
    poll(&prometheus, &dashboard_queries(&dashboard()), FRESH_DAEMON, None);
}
