//! Owners of sockets the kernel programs never saw made: a listener and a
//! UDP socket older than the daemon, held by another process in a unit's
//! cgroup, show that process and unit in `portmon ports -p`, through the
//! daemon (whose namespace helper reads the other process's descriptors:
//! the daemon itself holds no capability to) and without a daemon, as
//! `ss -p` shows them; and a bind that conflicts with them names that
//! process as the holder in `/api/v1/failures`, also in a storm.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{TcpListener, UdpSocket},
    os::fd::OwnedFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use portmon::failures::Errno;
use portmon_tests::{
    cgroup_root, http_get, metric_value, portmon_bin, portmon_ports, serial, wait_until, Daemon, NamedNetns,
};
use serde_json::Value;

const DAEMON: &str = "127.0.0.1:17497";
const TCP_PORT: u16 = 18_211;
const UDP_PORT: u16 = 18_261;
const UNIT: &str = "portmon-test-holder.service";

/// A `sleep` that holds a TCP listener (as its stdin) and a bound UDP
/// socket (as its stdout), made in `ns` by the test before any daemon ran,
/// in a cgroup named like a systemd unit.
struct Holder {
    child: Child,
    top: PathBuf,
}

impl Holder {
    fn start(ns: &NamedNetns) -> Self {
        let (listener, udp) = ns.enter(|| {
            (
                TcpListener::bind(("127.0.0.1", TCP_PORT)).expect("listen"),
                UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("udp bind"),
            )
        });
        let top = cgroup_root().join(format!("portmon-test-owners-{}", std::process::id()));
        let cgroup = top.join(UNIT);
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("mkdir {} (tests need root): {e}", cgroup.display()));
        let child = Command::new("sh")
            .args(["-c", r#"echo $$ > "$1" && exec sleep 600"#, "sh"])
            .arg(cgroup.join("cgroup.procs"))
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::from(OwnedFd::from(udp)))
            .spawn()
            .expect("spawn sh");
        let holder = Self { child, top };
        let pid = holder.pid();
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            }),
            "the holder did not start"
        );
        holder
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(20));
        let _ = std::fs::remove_dir(self.top.join(UNIT));
        let _ = std::fs::remove_dir(&self.top);
    }
}

fn json(text: &str) -> Vec<Value> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The listening rows of `portmon ports -lp` for `ns`, by port: (PROCESS, UNIT).
fn processes(daemon: &str, ns: &NamedNetns) -> BTreeMap<u16, (String, String)> {
    let entries = json(&portmon_ports(&[
        "--daemon", daemon, "--netns", &ns.name, "-l", "--json",
    ]));
    let table = portmon_ports(&["--daemon", daemon, "--netns", &ns.name, "-lpH", "-n"]);
    assert_eq!(table.lines().count(), entries.len(), "{table}");
    entries
        .iter()
        .zip(table.lines())
        .map(|(entry, line)| {
            let port = entry["port"].as_u64().expect("a port") as u16;
            // NETNS PROTO STATE LOCAL REMOTE CLASS PROCESS UNIT
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert!(cells.len() >= 6, "{line}");
            let process = cells.get(6).copied().unwrap_or_default().to_owned();
            let unit = cells.get(7).copied().unwrap_or_default().to_owned();
            assert_eq!(
                entry["owner"]["pid"].as_u64().map(|p| format!("({p})")),
                (!process.is_empty()).then(|| process[process.find('(').unwrap_or(0)..].to_owned()),
                "the table and JSON agree: {entry} / {line}"
            );
            (port, (process, unit))
        })
        .collect()
}

#[test]
fn ports_p_names_the_owner_of_sockets_older_than_the_daemon() {
    let _serial = serial();
    let ns = NamedNetns::create("owners");
    let holder = Holder::start(&ns);
    let pid = holder.pid();
    let want: BTreeMap<u16, (String, String)> = [TCP_PORT, UDP_PORT]
        .into_iter()
        .map(|port| (port, (format!("sleep({pid})"), UNIT.to_owned())))
        .collect();

    // ss -p, the tool people compare with, sees the same process.
    let ss = ns.exec("ss", &["-tulpnH"]);
    assert_eq!(ss.matches(&format!("pid={pid},")).count(), 2, "{ss}");

    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let mut seen = BTreeMap::new();
    let named = wait_until(Duration::from_secs(10), || {
        seen = processes(DAEMON, &ns);
        seen == want
    });
    assert!(named, "through the daemon: {seen:?}, want {want:?}");
    let walks = metric_value(&daemon.scrape(), "portmon_owner_walks_total", &[]);
    assert!(
        walks.is_some_and(|n| n >= 1.0),
        "the daemon walked /proc: {walks:?}"
    );

    // Without a daemon (nothing listens on port 9): the same owners.
    assert_eq!(processes("127.0.0.1:9", &ns), want, "without a daemon");
    drop((daemon, holder));
}

/// The failures of `port` the daemon recorded, as JSON.
fn failures_on(daemon: &Daemon, port: u16) -> Vec<Value> {
    let (status, body) = http_get(daemon.addr, "/api/v1/failures?limit=1000").expect("GET /api/v1/failures");
    assert_eq!(status, 200, "{body}");
    json(&body).into_iter().filter(|f| f["port"] == port).collect()
}

#[test]
fn a_conflicting_bind_names_the_process_holding_the_port() {
    let _serial = serial();
    let ns = NamedNetns::create("holder");
    let holder = Holder::start(&ns);
    let pid = holder.pid();
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    ns.enter(|| {
        let tcp = TcpListener::bind(("127.0.0.1", TCP_PORT)).expect_err("the port is held");
        assert_eq!(tcp.kind(), ErrorKind::AddrInUse, "{tcp}");
        let udp = UdpSocket::bind(("127.0.0.1", UDP_PORT)).expect_err("the port is held");
        assert_eq!(udp.kind(), ErrorKind::AddrInUse, "{udp}");
    });
    let in_use = serde_json::to_value(Errno::AddrInUse).expect("errno as JSON");
    for port in [TCP_PORT, UDP_PORT] {
        let mut failures = Vec::new();
        let recorded = wait_until(Duration::from_secs(10), || {
            failures = failures_on(&daemon, port);
            !failures.is_empty()
        });
        assert!(recorded, "no failure on {port}");
        assert_eq!(failures.len(), 1, "{failures:#?}");
        let f = &failures[0];
        assert_eq!(f["errno"], in_use, "{f}");
        assert_eq!(f["pid"], std::process::id(), "the side that failed: {f}");
        let h = &f["holder"];
        assert_eq!(h["pid"], pid, "the side that holds: {f}");
        assert_eq!(h["comm"], "sleep", "{f}");
        assert_eq!(h["unit"], UNIT, "{f}");
        assert!(h["socket_cookie"].as_u64().is_some_and(|c| c != 0), "{f}");
    }

    // A storm of conflicts on one port: every one is recorded with its
    // holder, from the answer kept for a second, and the daemon keeps up.
    const STORM: usize = 300;
    let started = Instant::now();
    ns.enter(|| {
        for _ in 0..STORM {
            let err = TcpListener::bind(("127.0.0.1", TCP_PORT)).expect_err("the port is held");
            assert_eq!(err.kind(), ErrorKind::AddrInUse);
        }
    });
    let mut failures = Vec::new();
    let recorded = wait_until(Duration::from_secs(20), || {
        failures = failures_on(&daemon, TCP_PORT);
        failures.len() > STORM
    });
    assert!(recorded, "{} of {} recorded", failures.len(), STORM + 1);
    let named = failures.iter().filter(|f| f["holder"]["pid"] == pid).count();
    assert_eq!(
        named,
        failures.len(),
        "every conflict of the storm names the holder (taken {:?})",
        started.elapsed()
    );
    let exposition = daemon.scrape();
    assert_eq!(
        metric_value(&exposition, "portmon_conflict_holders_not_looked_up_total", &[]),
        Some(0.0),
        "one port's holder is looked up at most once a second"
    );

    // The runbook's question, "who has my port?", asked of portmon ports.
    let port = TCP_PORT.to_string();
    let who = portmon_ports(&["--daemon", DAEMON, "--netns", &ns.name, "--port", &port, "-lpH"]);
    assert!(
        who.contains(&format!("sleep({pid})")) && who.contains(UNIT),
        "{who}"
    );
    drop((daemon, holder));
}

#[test]
fn the_log_line_of_a_conflict_names_both_sides() {
    let _serial = serial();
    let ns = NamedNetns::create("holder-log");
    let holder = Holder::start(&ns);
    let pid = holder.pid();
    let log = std::env::temp_dir().join(format!("portmon-owners-{}.log", std::process::id()));
    let addr: std::net::SocketAddr = "127.0.0.1:17498".parse().unwrap();
    let mut daemon = Command::new(portmon_bin())
        .args(["run", "--listen", &addr.to_string()])
        .env("PORTMON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the log file"))
        .spawn()
        .expect("spawn portmon run");
    let up = wait_until(Duration::from_secs(30), || {
        matches!(http_get(addr, "/healthz"), Ok((200, _)))
    });
    assert!(up, "portmon run on {addr} did not get ready");
    ns.enter(|| {
        let err = TcpListener::bind(("127.0.0.1", TCP_PORT)).expect_err("the port is held");
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    });
    let mut text = String::new();
    let logged = wait_until(Duration::from_secs(10), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(&format!("port {TCP_PORT} is held by"))
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_file(&log);
    assert!(logged, "no line names the holder: {text}");
    let line = text
        .lines()
        .find(|l| l.contains(&format!("port {TCP_PORT} is held by")))
        .unwrap_or_default();
    assert!(
        !line.contains('\u{1b}'),
        "a log written to a file carries no terminal colours: {line:?}"
    );
    for want in [
        format!("held by sleep({pid}) of {UNIT}"),
        format!("pid={}", std::process::id()),
        format!("holder_pid={pid}"),
        "holder_comm=sleep".to_owned(),
    ] {
        assert!(line.contains(&want), "{want} in {line}");
    }
    drop(holder);
}
