//! Every network namespace covered with the unit's privileges, by a daemon
//! that holds no capability: the namespace helper keeps CAP_SYS_ADMIN and
//! CAP_SYS_PTRACE, opens what the inventory reads inside other namespaces,
//! and when it is killed the daemon says so once and goes on.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use portmon_tests::{http_get, metric_value, serial, wait_until, NamedNetns};

use crate::{
    exhaustion::{connect_until_refused, narrow_pool, Server, POOL},
    service::{run_as_nobody, unit_capabilities},
};

/// CAP_SYS_ADMIN (21) and CAP_SYS_PTRACE (19), as `/proc/PID/status` shows them.
const HELPER_CAPS: &str = "0000000000280000";
const NONE: &str = "0000000000000000";

fn scrape(addr: SocketAddr) -> String {
    http_get(addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn wait_metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
    let mut last = None;
    wait_until(Duration::from_secs(20), || {
        last = metric_value(&scrape(addr), name, labels);
        last == Some(want)
    });
    last
}

/// A field of `/proc/PID/status`.
fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

/// The children of `parent` named `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| status_field(pid, "PPid") == parent && status_field(pid, "Name") == comm)
        .collect()
}

#[test]
fn with_the_units_privileges_another_namespaces_pool_is_covered_and_the_daemon_holds_nothing() {
    let _serial = serial();
    let ns = NamedNetns::create("privsep");
    ns.enter(narrow_pool);
    // A root process in a namespace of its own with no /run/netns name: the
    // daemon, as user nobody, cannot even look at its /proc/PID/ns/net.
    let hidden = Killed(
        Command::new("unshare")
            .args(["-n", "/bin/busybox", "nc", "-l", "-p", "18086"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare -n busybox nc"),
    );
    let addr: SocketAddr = "127.0.0.1:17486".parse().unwrap();
    let mut daemon = run_as_nobody("privsep", &unit_capabilities(), "127.0.0.1:17486", &[]);
    daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log_text()));

    let netns = ns.name.as_str();
    assert_eq!(
        wait_metric(
            addr,
            "portmon_ephemeral_pool_ports",
            &[("netns", netns)],
            f64::from(POOL)
        ),
        Some(f64::from(POOL)),
        "the named namespace's pool:\n{}",
        daemon.log_text()
    );
    let (server, clients) = ns.enter(|| {
        let server = Server::start(5000);
        let (clients, err) = connect_until_refused(server.addr, POOL as usize);
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        (server, clients)
    });
    assert_eq!(clients.len() as u32, POOL);
    let tcp_connect = [("netns", netns), ("proto", "tcp"), ("op", "connect")];
    let errors = wait_metric(
        addr,
        "portmon_ephemeral_exhaustion_errors_total",
        &tcp_connect,
        1.0,
    );
    let utilization = wait_metric(addr, "portmon_ephemeral_utilization_ratio", &tcp_connect, 1.0);
    let in_use = wait_metric(
        addr,
        "portmon_ephemeral_ports_in_use",
        &[("netns", netns), ("proto", "tcp")],
        f64::from(POOL),
    );
    if (errors, utilization, in_use) != (Some(1.0), Some(1.0), Some(f64::from(POOL))) {
        let body = scrape(addr);
        let ours: Vec<&str> = body.lines().filter(|l| l.contains(netns)).collect();
        panic!(
            "errors {errors:?}, utilization {utilization:?}, in use {in_use:?}:\n{}\n{}",
            ours.join("\n"),
            daemon.log_text()
        );
    }
    drop((clients, server));
    let mut ports = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            ports = http_get(addr, "/api/v1/ports?listening=1&port=18086")
                .map(|(_, body)| body)
                .unwrap_or_default();
            ports.contains("\"port\":18086")
        }),
        "a root process's namespace, opened by pid: {ports}"
    );

    let pid = daemon.child.id();
    for (effective, permitted) in daemon.thread_capabilities() {
        assert_eq!(
            (effective.as_str(), permitted.as_str()),
            (NONE, NONE),
            "a daemon thread kept capabilities"
        );
    }
    assert_eq!(status_field(pid, "CapAmb"), NONE);
    let helpers = children_named(pid, "portmon-privsep");
    let [helper] = helpers[..] else {
        panic!("one namespace helper, found {helpers:?}");
    };
    for field in ["CapEff", "CapPrm"] {
        assert_eq!(status_field(helper, field), HELPER_CAPS, "helper {field}");
    }
    assert_eq!(status_field(helper, "CapAmb"), NONE);
    assert_eq!(status_field(helper, "Threads"), "1");
    // Nothing of the daemon's (the maps, links and listener were opened
    // after the fork): the standard three, its own namespace, its channel.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{helper}/fd"))
        .expect("helper fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        fds.iter().all(|f| !f.starts_with("anon_inode:bpf")) && fds.len() <= 5,
        "{fds:?}"
    );

    // SAFETY: kill(2) on the helper this test found.
    unsafe { libc::kill(helper as i32, libc::SIGKILL) };
    let gone = |log: &str| {
        log.lines()
            .filter(|l| l.contains("the namespace helper is gone"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(25), || gone(&daemon.log_text()) == 1),
        "no line about the helper:\n{}",
        daemon.log_text()
    );
    // Still serving; namespaces found from now on are out of reach, the
    // ones already open stay covered, portmon's own too.
    let later = NamedNetns::create("privsep-later");
    std::thread::sleep(Duration::from_secs(12));
    let body = scrape(addr);
    assert!(body.contains("portmon_build_info{"), "{body}");
    assert_eq!(
        metric_value(&body, "portmon_ephemeral_pool_ports", &[("netns", netns)]),
        Some(f64::from(POOL))
    );
    assert_eq!(
        metric_value(
            &body,
            "portmon_ephemeral_pool_ports",
            &[("netns", later.name.as_str())]
        ),
        None
    );
    let (status, ports) = http_get(addr, "/api/v1/ports?listening=1&port=17486").expect("ports");
    assert_eq!(status, 200);
    assert!(ports.contains("\"port\":17486"), "{ports}");

    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .expect("exit after SIGTERM");
    let log = daemon.log_text();
    assert!(status.success(), "{status}:\n{log}");
    assert_eq!(gone(&log), 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(hidden);
}

/// A child killed on drop, however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn without_the_helpers_capabilities_portmon_covers_its_own_namespace_and_says_so_once() {
    let _serial = serial();
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| !crate::service::HELPER_CAPABILITIES.contains(&c.as_str()))
        .collect();
    let addr: SocketAddr = "127.0.0.1:17487".parse().unwrap();
    let mut daemon = run_as_nobody("no-helper", &caps, "127.0.0.1:17487", &[]);
    daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log_text()));
    assert!(children_named(daemon.child.id(), "portmon-privsep").is_empty());
    let (_, ports) = http_get(addr, "/api/v1/ports?listening=1&port=17487").expect("ports");
    assert!(ports.contains("\"port\":17487"), "{ports}");
    let log = daemon.log_text();
    let degraded: Vec<&str> = log.lines().filter(|l| l.contains("CAP_SYS_ADMIN")).collect();
    assert_eq!(degraded.len(), 1, "one line about what is missing:\n{log}");
    assert!(
        degraded[0].contains("covers its own namespace only"),
        "{}",
        degraded[0]
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success(), "{status}:\n{}", daemon.log_text());
}
