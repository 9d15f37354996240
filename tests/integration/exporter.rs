//! The inventory and the exporter, checked against `ss` and through a real
//! Prometheus scraping the real daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use portmon::port_class::PortClass;
use portmon_tests::{
    http_get, metric_value, portmon_ports, serial, ss_counts, Daemon, NamedNetns, Prometheus,
    PROMETHEUS_PATIENCE,
};

const DAEMON: &str = "127.0.0.1:17460";
const PROMETHEUS: &str = "127.0.0.1:19091";
/// The per-port series limit counts ports of every namespace on the host,
/// which a fresh namespace cannot keep out: tests that read a port's own
/// series lift it above anything a test host holds.
const NO_FOLDING: &[&str] = &["--port-series-limit", "10000000"];

/// Sockets a workload leaves behind: listeners, established pairs, and
/// client sockets in TIME_WAIT (closed first by the client).
struct Workload {
    _keep: Vec<Box<dyn Send>>,
    /// The local ports its TCP sockets hold, TIME_WAIT ones included.
    tcp_ports: BTreeSet<u16>,
}

fn workload(listen_port: u16, established: usize, time_wait: usize, udp_port: u16) -> Workload {
    let mut keep: Vec<Box<dyn Send>> = Vec::new();
    let listener = TcpListener::bind(("127.0.0.1", listen_port)).expect("listen");
    let mut tcp_ports = BTreeSet::from([listen_port]);
    for i in 0..established + time_wait {
        let client = TcpStream::connect(("127.0.0.1", listen_port)).expect("connect");
        tcp_ports.insert(client.local_addr().expect("client address").port());
        let (server, _) = listener.accept().expect("accept");
        if i < established {
            keep.push(Box::new(client));
            keep.push(Box::new(server));
        } else {
            // The side that closes first keeps the TIME_WAIT.
            drop(client);
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut &server, &mut buf);
            drop(server);
        }
    }
    keep.push(Box::new(listener));
    keep.push(Box::new(
        UdpSocket::bind(("127.0.0.1", udp_port)).expect("udp bind"),
    ));
    Workload {
        _keep: keep,
        tcp_ports,
    }
}

/// Counts by (proto, port, state) from `/api/v1/ports` for one namespace.
fn api_counts(daemon: &Daemon, netns: &str) -> BTreeMap<(String, u16, String), u64> {
    let (status, body) =
        http_get(daemon.addr, &format!("/api/v1/ports?netns={netns}")).expect("GET /api/v1/ports");
    assert_eq!(status, 200, "{body}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body).expect("ports JSON");
    let mut counts = BTreeMap::new();
    for e in entries {
        let key = (
            e["proto"].as_str().unwrap().to_owned(),
            e["port"].as_u64().unwrap() as u16,
            e["state"].as_str().unwrap().to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Counts by (proto, port, state) from `portmon_sockets` in `/metrics`.
fn metric_counts(daemon: &Daemon, netns: &str) -> BTreeMap<(String, u16, String), u64> {
    let (status, body) = http_get(daemon.addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let mut counts = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("portmon_sockets{")) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\"")).map(|i| i + name.len() + 2)?;
            labels[start..].split('"').next().map(str::to_owned)
        };
        if label("netns").as_deref() != Some(netns) {
            continue;
        }
        let port: u16 = label("port").unwrap().parse().expect("a per-port series");
        counts.insert(
            (label("proto").unwrap(), port, label("state").unwrap()),
            value.parse::<f64>().unwrap() as u64,
        );
    }
    counts
}

#[test]
fn inventory_and_metrics_match_ss_for_sockets_older_and_newer_than_the_daemon() {
    let _serial = serial();
    let ns = NamedNetns::create("inventory");
    let before = ns.enter(|| workload(18_001, 3, 2, 18_051));
    let daemon = Daemon::start(DAEMON.parse().unwrap(), NO_FOLDING);
    let after = ns.enter(|| workload(18_002, 2, 1, 18_052));
    // IPv6 too: one TCP dump answers for both families.
    let v6 = ns.enter(|| {
        let listener = TcpListener::bind("[::1]:18004").expect("listen on ::1");
        let client = TcpStream::connect("[::1]:18004").expect("connect to ::1");
        let server = listener.accept().expect("accept").0;
        let udp = UdpSocket::bind("[::1]:18054").expect("udp bind ::1");
        (listener, client, server, udp)
    });

    let ss = ss_counts(&ns.exec("ss", &["-tuanH"]));
    assert!(
        ss.contains_key(&("tcp".into(), 18_001, "listen".into())),
        "workload missing from ss: {ss:?}"
    );
    assert!(
        ss.keys().any(|(_, _, state)| state == "time_wait"),
        "no TIME_WAIT in ss: {ss:?}"
    );
    assert_eq!(
        api_counts(&daemon, &ns.name),
        ss,
        "/api/v1/ports against ss -tuan"
    );
    assert_eq!(
        metric_counts(&daemon, &ns.name),
        ss,
        "portmon_sockets against ss -tuan"
    );
    let body = daemon.scrape();
    for (proto, family) in [("tcp", "ipv4"), ("tcp", "ipv6"), ("udp", "ipv4"), ("udp", "ipv6")] {
        assert_eq!(
            metric_value(
                &body,
                "portmon_inventory_errors_total",
                &[("proto", proto), ("family", family)]
            ),
            Some(0.0),
            "no failed sock_diag dump, and the counter is there from the start"
        );
    }
    drop((before, after, v6));
}

#[test]
fn prometheus_scrapes_the_numbers_the_kernel_counted() {
    let _serial = serial();
    let ns = NamedNetns::create("prometheus");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), NO_FOLDING);
    let prometheus = Prometheus::start(PROMETHEUS.parse().unwrap(), daemon.addr, &[]);
    // TIME_WAIT lasts 60 s: the workload starts once Prometheus scrapes, so
    // that a slow start (an emulated guest on a busy host) cannot outlast it.
    assert_eq!(
        prometheus.wait_for("up", 1.0, PROMETHEUS_PATIENCE),
        Some(1.0),
        "Prometheus scrapes the daemon"
    );
    let (tcp_port, udp_port) = (18_003, 18_053);
    let (established, time_wait) = (4, 3);
    let work = ns.enter(|| workload(tcp_port, established, time_wait, udp_port));
    let failed = ns.enter(|| TcpListener::bind(("127.0.0.1", tcp_port)).expect_err("port in use"));
    assert_eq!(failed.kind(), std::io::ErrorKind::AddrInUse);

    let n = &ns.name;
    let count = |n: usize| n as f64;
    let mut checks = vec![
        // One bind each: the listener and the UDP socket; the failed one is an error.
        (
            format!(r#"portmon_binds_total{{netns="{n}",proto="tcp",port="{tcp_port}"}}"#),
            1.0,
        ),
        (
            format!(r#"portmon_binds_total{{netns="{n}",proto="udp",port="{udp_port}"}}"#),
            1.0,
        ),
        (
            format!(r#"portmon_bind_errors_total{{netns="{n}",port="{tcp_port}",errno="EADDRINUSE"}}"#),
            1.0,
        ),
        // Every connection was established once, those closed since too.
        (
            format!(r#"portmon_connects_total{{netns="{n}",proto="tcp",port="{tcp_port}"}}"#),
            count(established + time_wait),
        ),
        (
            format!(r#"portmon_listening_ports{{netns="{n}",proto="tcp",port="{tcp_port}"}}"#),
            1.0,
        ),
        (
            format!(r#"portmon_listening_ports{{netns="{n}",proto="udp",port="{udp_port}"}}"#),
            1.0,
        ),
        // Both ends of each open connection; the client ends of the closed ones.
        (
            format!(r#"sum(portmon_sockets{{netns="{n}",proto="tcp",state="established"}})"#),
            count(2 * established),
        ),
        (
            format!(
                r#"sum(portmon_sockets{{netns="{n}",proto="tcp",port="{tcp_port}",state="established"}})"#
            ),
            count(established),
        ),
        (
            format!(r#"sum(portmon_sockets{{netns="{n}",proto="tcp",state="time_wait"}})"#),
            count(time_wait),
        ),
        (
            format!(r#"sum(portmon_sockets{{netns="{n}",proto="tcp"}})"#),
            count(1 + 2 * established + time_wait),
        ),
        ("min(portmon_program_attached)".to_owned(), 1.0),
        ("portmon_events_dropped_total".to_owned(), 0.0),
    ];
    // Distinct local ports per class: the listener's and each client's
    // ephemeral port (TIME_WAIT holds it), wherever the kernel picked it.
    for class in PortClass::ALL {
        let held =
            |ports: &BTreeSet<u16>| count(ports.iter().filter(|p| PortClass::of(**p) == class).count());
        let udp = BTreeSet::from([udp_port]);
        for (proto, ports) in [("tcp", &work.tcp_ports), ("udp", &udp)] {
            let query = format!(
                r#"portmon_ports_in_use{{netns="{n}",proto="{proto}",class="{}"}}"#,
                class.label()
            );
            checks.push((query, held(ports)));
        }
    }
    assert_eq!(
        work.tcp_ports.len(),
        1 + established + time_wait,
        "clients share no port"
    );
    // What TIME_WAIT holds first, while it lasts.
    let (timed, rest): (Vec<_>, Vec<_>) = checks.into_iter().partition(|(query, _)| {
        query.contains("time_wait")
            || query.contains("ports_in_use")
            || (query.starts_with("sum(portmon_sockets{netns=\"") && !query.contains("state="))
    });
    for (query, want) in timed.into_iter().chain(rest) {
        let got = prometheus.wait_for(&query, want, PROMETHEUS_PATIENCE);
        assert_eq!(got, Some(want), "{query}");
    }
    drop(work);
}

/// A TCP listener on `addr` with `SO_REUSEPORT`, so that several can share
/// one port as a server's worker processes do.
fn reuseport_listener(addr: std::net::SocketAddrV4) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr is built in full before bind reads it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&raw const one).cast(),
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
        assert_eq!(set, 0, "SO_REUSEPORT: {}", std::io::Error::last_os_error());
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let bound = libc::bind(
            fd,
            (&raw const sin).cast(),
            std::mem::size_of_val(&sin) as libc::socklen_t,
        );
        assert_eq!(bound, 0, "bind {addr}: {}", std::io::Error::last_os_error());
        assert_eq!(
            libc::listen(fd, 16),
            0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        owned
    }
}

#[test]
fn listening_ports_count_ports_by_address_scope_not_sockets() {
    let _serial = serial();
    let ns = NamedNetns::create("scope");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), NO_FOLDING);
    let (wildcard, loopback) = (18_006, 18_007);
    let listeners = ns.enter(|| {
        let mut all: Vec<std::os::fd::OwnedFd> = (0..3)
            .map(|_| {
                reuseport_listener(std::net::SocketAddrV4::new(
                    std::net::Ipv4Addr::UNSPECIFIED,
                    wildcard,
                ))
            })
            .collect();
        all.push(reuseport_listener(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            loopback,
        )));
        all
    });
    let body = daemon.scrape();
    let n = ns.name.as_str();
    let ports = |port: u16, scope: &str| {
        metric_value(
            &body,
            "portmon_listening_ports",
            &[("netns", n), ("port", &port.to_string()), ("scope", scope)],
        )
    };
    assert_eq!(
        ports(wildcard, "wildcard"),
        Some(1.0),
        "three sockets, one port:\n{body}"
    );
    assert_eq!(ports(loopback, "loopback"), Some(1.0), "{body}");
    assert_eq!(ports(loopback, "wildcard"), None, "{body}");
    assert_eq!(
        metric_value(
            &body,
            "portmon_sockets",
            &[("netns", n), ("port", &wildcard.to_string()), ("state", "listen")]
        ),
        Some(3.0),
        "the sockets are counted where sockets are"
    );
    assert!(
        !body.contains(r#"port="""#),
        "a series with an empty port label:\n{body}"
    );
    drop(listeners);
}

#[test]
fn promtool_finds_nothing_wrong_with_the_exposition() {
    let _serial = serial();
    let ns = NamedNetns::create("promtool");
    // With the opt-in histogram: the one family that is not a counter or a gauge.
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &["--connect-search", "true"]);
    let work = ns.enter(|| workload(18_004, 1, 1, 18_054));
    let _ = ns.enter(|| TcpListener::bind(("127.0.0.1", 18_004)).expect_err("port in use"));
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = http_get(daemon.addr, "/metrics").expect("GET /metrics");
    for family in [
        "portmon_binds_total",
        "portmon_sockets",
        "portmon_bind_errors_total",
        "portmon_build_info",
        "portmon_connect_port_search_seconds",
    ] {
        assert!(body.contains(&format!("# TYPE {family} ")), "{family} missing");
    }
    // The kernel counts skipped runs for every program, statistics on or
    // off: each attached program has its series.
    for program in ["connect4", "inet_sock_set_state"] {
        assert_eq!(
            metric_value(
                &body,
                "portmon_bpf_program_recursion_misses_total",
                &[("program", program)]
            ),
            Some(0.0),
            "{program}'s skipped runs"
        );
    }
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
    drop(work);
}

#[test]
fn ports_command_answers_with_a_daemon_and_without_one() {
    let _serial = serial();
    let ns = NamedNetns::create("ports");
    let work = ns.enter(|| workload(18_005, 1, 0, 18_055));
    let ports = |daemon: &str| {
        let out = portmon_ports(&["--listening", "--netns", &ns.name, "--daemon", daemon, "--json"]);
        let entries: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
        let mut seen: Vec<(String, u64, String)> = entries
            .iter()
            .map(|e| {
                (
                    e["proto"].as_str().unwrap().into(),
                    e["port"].as_u64().unwrap(),
                    e["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        seen.sort();
        seen
    };
    let want = vec![
        ("tcp".to_owned(), 18_005, "listen".to_owned()),
        ("udp".to_owned(), 18_055, "unconn".to_owned()),
    ];
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    assert_eq!(ports(DAEMON), want, "through the daemon");
    drop(daemon);
    assert_eq!(ports("127.0.0.1:9"), want, "a snapshot of its own, no daemon");
    drop(work);
}
