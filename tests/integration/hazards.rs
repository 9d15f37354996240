//! Hazards before they bite, from real sockets in named network namespaces
//! with a narrowed pool (see `exhaustion::narrow_pool`).

use std::net::TcpListener;

use portmon_tests::{metric_value, portmon_bin, serial, wait_until, write_sysctl, Daemon, NamedNetns};

use crate::exhaustion::{connect_until_refused, narrow_pool, Server, POOL};

/// A port inside the narrowed pool (40010–40099), not reserved.
const LISTENER_PORT: u16 = 40050;

#[test]
fn a_listener_in_the_ephemeral_range_shows_until_its_port_is_reserved() {
    let _serial = serial();
    let ns = NamedNetns::create("hazard");
    ns.enter(narrow_pool);
    let daemon = Daemon::start("127.0.0.1:17521".parse().unwrap(), &[]);
    let netns = ns.name.as_str();
    let count = [("netns", netns), ("proto", "tcp")];
    let port = LISTENER_PORT.to_string();
    let info = [("netns", netns), ("proto", "tcp"), ("port", port.as_str())];
    let read = |name: &str, labels: &[(&str, &str)]| metric_value(&daemon.scrape(), name, labels);

    wait_until(std::time::Duration::from_secs(10), || {
        read("portmon_listeners_in_ephemeral_range", &count).is_some()
    });
    assert_eq!(
        read("portmon_listeners_in_ephemeral_range", &count),
        Some(0.0),
        "a fresh namespace has no listener"
    );

    // A listener outside the range does not count.
    let outside = ns.enter(|| TcpListener::bind(("127.0.0.1", 5000)).expect("listen on 5000"));
    let (inside, comm) = ns.enter(|| {
        let listener = TcpListener::bind(("0.0.0.0", LISTENER_PORT)).expect("listen in the pool");
        let comm = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
        (listener, comm.trim().to_owned())
    });
    let mut body = String::new();
    wait_until(std::time::Duration::from_secs(10), || {
        body = daemon.scrape();
        metric_value(&body, "portmon_listeners_in_ephemeral_range", &count) == Some(1.0)
    });
    assert_eq!(
        metric_value(&body, "portmon_listeners_in_ephemeral_range", &count),
        Some(1.0),
        "{body}"
    );
    let with_owner = [&info[..], &[("comm", comm.as_str())]].concat();
    assert_eq!(
        metric_value(&body, "portmon_listener_in_ephemeral_range_info", &with_owner),
        Some(1.0),
        "the info series names the listening command: {body}"
    );

    // The fix the runbook gives: reserve the port, keeping what is reserved.
    let (_, api) = daemon.get("/api/v1/ephemeral").expect("the ephemeral API");
    let api: serde_json::Value = serde_json::from_str(&api).expect("JSON");
    let fix = api["reserved_ports_fixes"]
        .as_array()
        .and_then(|fixes| fixes.iter().find(|f| f["netns_name"] == netns))
        .unwrap_or_else(|| panic!("no fix for {netns}: {api}"));
    assert_eq!(fix["current"], "40000-40009");
    assert_eq!(fix["value"], "40000-40009,40050");
    ns.enter(|| write_sysctl("net/ipv4/ip_local_reserved_ports", "40000-40009,40050"));
    wait_until(std::time::Duration::from_secs(10), || {
        read("portmon_listeners_in_ephemeral_range", &count) == Some(0.0)
    });
    let body = daemon.scrape();
    assert_eq!(
        metric_value(&body, "portmon_listeners_in_ephemeral_range", &count),
        Some(0.0),
        "a reserved port is out of the pool: {body}"
    );
    assert_eq!(
        metric_value(&body, "portmon_listener_in_ephemeral_range_info", &info),
        None,
        "{body}"
    );
    drop((inside, outside));
}

/// `portmon doctor ARGS` for one namespace: its exit status and output.
fn doctor(netns: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(portmon_bin())
        .args(["doctor", "--netns", netns])
        .args(args)
        .output()
        .expect("run portmon doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}{stderr}"))
}

/// A clean namespace, then a listener in its ephemeral range, then that
/// port reserved, then the pool exhausted: doctor's exit status follows
/// (0, 1, 0, 2), from the daemon and from a snapshot of its own.
#[test]
fn doctor_finds_listeners_in_the_range_and_an_exhausted_pool() {
    let _serial = serial();
    let ns = NamedNetns::create("doctor");
    ns.enter(narrow_pool);
    let daemon = Daemon::start("127.0.0.1:17522".parse().unwrap(), &[]);
    let netns = ns.name.as_str();
    let at_daemon = daemon.addr.to_string();
    let from_daemon = ["--daemon", at_daemon.as_str()];
    // Nothing listens on port 1 of loopback: doctor takes its own snapshot.
    let own_snapshot = ["--daemon", "127.0.0.1:1"];

    for args in [&from_daemon, &own_snapshot] {
        let (code, out) = doctor(netns, args);
        assert_eq!(code, Some(0), "a clean namespace: {out}");
        assert!(out.contains("nothing urgent"), "{out}");
    }
    assert!(doctor(netns, &own_snapshot).1.contains("own snapshot"));

    let listener = ns.enter(|| TcpListener::bind(("0.0.0.0", LISTENER_PORT)).expect("listen in the pool"));
    let fix = "sysctl -w net.ipv4.ip_local_reserved_ports=40000-40009,40050";
    for args in [&from_daemon, &own_snapshot] {
        let (code, out) = doctor(netns, args);
        assert_eq!(code, Some(1), "a listener in the range is a warning: {out}");
        assert!(out.contains(fix), "{out}");
        assert!(out.contains("/etc/sysctl.d/"), "{out}");
    }
    let (code, json) = doctor(netns, &[&from_daemon[..], &["--json"]].concat());
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&json).expect("doctor --json");
    assert_eq!(json["status"], 1);
    assert_eq!(json["findings"][0]["kind"], "listener_in_ephemeral_range");
    assert_eq!(json["findings"][0]["severity"], "warning");

    ns.enter(|| write_sysctl("net/ipv4/ip_local_reserved_ports", "40000-40009,40050"));
    let (code, out) = doctor(netns, &from_daemon);
    assert_eq!(code, Some(0), "the reserved port is no hazard: {out}");

    ns.enter(|| {
        let server = Server::start(5000);
        // One port fewer: 40050 is reserved now.
        let (clients, err) = connect_until_refused(server.addr, POOL as usize);
        assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable, "{err}");
        let (code, out) = doctor(netns, &from_daemon);
        assert_eq!(code, Some(2), "an exhausted pool is critical: {out}");
        assert!(
            out.contains("CRITICAL: tcp ephemeral ports 100% used for connect()"),
            "{out}"
        );
        assert!(out.contains("busiest destination 127.0.0.1:5000"), "{out}");
        assert!(out.contains("processes holding the most ports to it:"), "{out}");
        assert!(out.contains("reuse connections to 127.0.0.1:5000"), "{out}");
        let (code, out) = doctor(netns, &own_snapshot);
        assert_eq!(code, Some(2), "the snapshot sees it too: {out}");
        drop(clients);
    });
    drop(listener);
}
