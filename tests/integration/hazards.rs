//! Hazards before they bite, from real sockets in named network namespaces
//! with a narrowed pool (see `exhaustion::narrow_pool`).

use std::net::TcpListener;

use portmon_tests::{metric_value, serial, wait_until, write_sysctl, Daemon, NamedNetns};

use crate::exhaustion::narrow_pool;

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
