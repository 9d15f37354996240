//! `portmon ports` against a running daemon: the table and each filter,
//! checked against the sockets the test made in a fresh namespace, the
//! systemd unit of an owner's cgroup, and the daemon found through its
//! configuration file.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use portmon::port_class::PortClass;
use portmon_tests::{cgroup_root, metric_value, portmon_ports, serial, Daemon, NamedNetns};
use serde_json::Value;

const DAEMON: &str = "127.0.0.1:17466";
const TCP_PORT: u16 = 18_011;
const TCP6_PORT: u16 = 18_012;
const UDP_PORT: u16 = 18_061;
const UNIT_PORT: u16 = 18_013;

/// One socket as `portmon ports` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    proto: String,
    state: String,
    local: String,
    remote: String,
}

impl Row {
    fn new(proto: &str, state: &str, local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            proto: proto.into(),
            state: state.into(),
            local: local.to_string(),
            remote: remote.to_string(),
        }
    }

    fn port(&self) -> u16 {
        self.local.parse::<SocketAddr>().expect("a socket address").port()
    }

    /// What `ss -l` counts as listening.
    fn listening(&self) -> bool {
        matches!(
            (self.proto.as_str(), self.state.as_str()),
            ("tcp", "listen") | ("udp", "unconn")
        )
    }
}

/// Sockets the test holds open, and the rows they must show as.
struct Made {
    _keep: Vec<Box<dyn Send>>,
    rows: Vec<Row>,
}

/// A TCP listener with two connections to it, an IPv6 listener, a bound
/// UDP socket and a connected one.
fn make_sockets() -> Made {
    let mut keep: Vec<Box<dyn Send>> = Vec::new();
    let mut rows = Vec::new();
    let any4: SocketAddr = ([0, 0, 0, 0], 0).into();
    let any6: SocketAddr = (Ipv6Addr::UNSPECIFIED, 0).into();

    let listener = TcpListener::bind(("127.0.0.1", TCP_PORT)).expect("listen");
    rows.push(Row::new("tcp", "listen", listener.local_addr().unwrap(), any4));
    for _ in 0..2 {
        let client = TcpStream::connect(("127.0.0.1", TCP_PORT)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        for s in [&client, &server] {
            rows.push(Row::new(
                "tcp",
                "established",
                s.local_addr().unwrap(),
                s.peer_addr().unwrap(),
            ));
        }
        keep.push(Box::new(client));
        keep.push(Box::new(server));
    }
    keep.push(Box::new(listener));

    let listener6 = TcpListener::bind((Ipv6Addr::LOCALHOST, TCP6_PORT)).expect("listen on ::1");
    rows.push(Row::new("tcp", "listen", listener6.local_addr().unwrap(), any6));
    keep.push(Box::new(listener6));

    let udp = UdpSocket::bind(("127.0.0.1", UDP_PORT)).expect("udp bind");
    rows.push(Row::new("udp", "unconn", udp.local_addr().unwrap(), any4));
    let connected = UdpSocket::bind(("127.0.0.1", 0)).expect("udp bind 0");
    connected.connect(udp.local_addr().unwrap()).expect("udp connect");
    rows.push(Row::new(
        "udp",
        "established",
        connected.local_addr().unwrap(),
        connected.peer_addr().unwrap(),
    ));
    keep.push(Box::new(udp));
    keep.push(Box::new(connected));
    rows.sort();
    Made { _keep: keep, rows }
}

/// The table's rows, each as header → cell. Cells are left-aligned under
/// their header, so the header's columns cut every line.
fn table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for name in header.split_whitespace() {
        let start = at + header[at..].find(name).expect("header word");
        starts.push((start, name));
        at = start + name.len();
    }
    lines
        .map(|line| {
            let mut row = BTreeMap::new();
            for (i, (start, name)) in starts.iter().enumerate() {
                let end = starts
                    .get(i + 1)
                    .map_or(line.len(), |(next, _)| (*next).min(line.len()));
                let cell = line.get((*start).min(line.len())..end).unwrap_or("").trim();
                row.insert((*name).to_owned(), cell.to_owned());
            }
            row
        })
        .collect()
}

fn table_row(cells: &BTreeMap<String, String>) -> Row {
    Row {
        proto: cells["PROTO"].clone(),
        state: cells["STATE"].clone(),
        local: cells["LOCAL"].clone(),
        remote: cells["REMOTE"].clone(),
    }
}

fn json(text: &str) -> Vec<Value> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn json_row(entry: &Value) -> Row {
    let field = |name: &str| {
        entry[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {entry}"))
            .to_owned()
    };
    Row {
        proto: field("proto"),
        state: field("state"),
        local: field("local"),
        remote: field("remote"),
    }
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

/// The keys every entry has, whatever its socket: scripts rely on them.
const ENTRY_KEYS: [&str; 12] = [
    "class", "cookie", "family", "local", "netns", "owner", "port", "proto", "remote", "service", "state",
    "uid",
];
const OWNER_KEYS: [&str; 4] = ["cgroup", "comm", "pid", "unit"];

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// The systemd unit this test process runs in, as its cgroup v2 path names it.
fn own_unit() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    portmon::cgroups::systemd_unit(path).map(str::to_owned)
}

/// Which of the sockets made a filter keeps.
type Keeps = fn(&Row) -> bool;

#[test]
fn ports_lists_the_sockets_made_in_a_namespace_with_every_filter() {
    let _serial = serial();
    let ns = NamedNetns::create("ports-cli");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let made = ns.enter(make_sockets);
    let n = ns.name.as_str();
    let pid = std::process::id();

    let filters: [(&[&str], Keeps); 4] = [
        (&[], |_| true),
        (&["--port", "18011"], |r| r.port() == TCP_PORT),
        (&["--proto", "udp"], |r| r.proto == "udp"),
        (&["--listening"], Row::listening),
    ];
    for (filter, keeps) in filters {
        let want: Vec<Row> = made.rows.iter().filter(|r| keeps(r)).cloned().collect();
        assert!(!want.is_empty(), "{filter:?} keeps none of the sockets made");
        // -p: the owners, as ss shows them.
        let mut args = vec!["--daemon", DAEMON, "--netns", n, "-p"];
        args.extend(filter);

        let rows = table(&portmon_ports(&args));
        assert_eq!(
            sorted(rows.iter().map(table_row).collect()),
            want,
            "table of {args:?}"
        );
        for cells in &rows {
            let row = table_row(cells);
            assert_eq!(cells["NETNS"], n, "{cells:?}");
            assert_eq!(cells["CLASS"], PortClass::of(row.port()).label(), "{cells:?}");
            if row.listening() {
                assert!(cells["PROCESS"].ends_with(&format!("({pid})")), "{cells:?}");
                assert_eq!(cells["UNIT"], own_unit().unwrap_or_default(), "{cells:?}");
            }
        }

        args.push("--json");
        let entries = json(&portmon_ports(&args));
        assert_eq!(
            sorted(entries.iter().map(json_row).collect()),
            want,
            "JSON of {args:?}"
        );
        for entry in &entries {
            assert_eq!(keys(entry), ENTRY_KEYS, "{entry}");
            assert_eq!(entry["netns"], n, "{entry}");
            let owner = &entry["owner"];
            if json_row(entry).listening() {
                assert_eq!(owner["pid"], pid, "a socket this test bound: {entry}");
            }
            if !owner.is_null() {
                assert_eq!(keys(owner), OWNER_KEYS, "{entry}");
                assert_eq!(owner["unit"].as_str().map(str::to_owned), own_unit(), "{entry}");
            }
        }
    }

    // Without --netns: the same sockets under this namespace's name, and
    // others', such as the daemon's own listener.
    let everything = json(&portmon_ports(&["--daemon", DAEMON, "--json"]));
    let ours: Vec<Row> = everything
        .iter()
        .filter(|e| e["netns"] == n)
        .map(json_row)
        .collect();
    assert_eq!(sorted(ours), made.rows, "--netns left out");
    assert!(
        everything
            .iter()
            .any(|e| e["netns"] != n && e["state"] == "listen" && e["local"] == DAEMON),
        "the daemon's own listener is missing without --netns"
    );
    drop((made, daemon));
}

/// A cgroup v2 directory named like a systemd unit, removed on drop.
struct UnitCgroup {
    dir: PathBuf,
    unit: String,
}

impl UnitCgroup {
    fn create(tag: &str) -> Self {
        let unit = format!("portmon-test-{tag}-{}.service", std::process::id());
        let dir = cgroup_root().join(&unit);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir, unit }
    }

    /// Moves process `pid` into the cgroup.
    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    /// The cgroup's id, as the kernel programs record it: its inode number.
    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.dir).expect("cgroup dir").ino()
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        // Emptied when its process has been reaped; rmdir fails while not.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A Python process in the namespace that listens on `port` once moved
/// into `cgroup`: the unit's "service". Killed on drop.
struct Service {
    child: Child,
    pid: u32,
}

impl Service {
    fn start(ns: &NamedNetns, cgroup: &UnitCgroup, port: u16) -> Self {
        let script = format!(
            "import os, socket, sys\n\
             print(os.getpid(), flush=True)\n\
             sys.stdin.readline()\n\
             s = socket.socket()\n\
             s.bind(('127.0.0.1', {port}))\n\
             s.listen()\n\
             print('listening', flush=True)\n\
             sys.stdin.read()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ip netns exec python3 (tests need python3)");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the service's pid");
        let pid: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a pid: {line:?}"));
        // Moved before it binds: the kernel programs record the cgroup at bind().
        cgroup.adopt(pid);
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("tell the service to listen");
        line.clear();
        out.read_line(&mut line).expect("the service listening");
        assert_eq!(line.trim(), "listening");
        Self { child, pid }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ports_names_the_systemd_unit_of_the_owners_cgroup() {
    let _serial = serial();
    let ns = NamedNetns::create("ports-unit");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let cgroup = UnitCgroup::create("ports");
    let service = Service::start(&ns, &cgroup, UNIT_PORT);
    let port = UNIT_PORT.to_string();
    let args = ["--daemon", DAEMON, "--netns", &ns.name, "--port", &port];

    let entries = json(&portmon_ports(&[&args[..], &["--json"]].concat()));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let owner = &entries[0]["owner"];
    assert_eq!(owner["pid"], service.pid, "{owner}");
    assert_eq!(
        owner["cgroup"],
        cgroup.id(),
        "the cgroup id is its inode: {owner}"
    );
    assert_eq!(owner["unit"], cgroup.unit.as_str(), "{owner}");

    let rows = table(&portmon_ports(&[&args[..], &["-p"]].concat()));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["UNIT"], cgroup.unit, "{rows:?}");
    let comm = owner["comm"].as_str().expect("comm");
    assert_eq!(rows[0]["PROCESS"], format!("{comm}({})", service.pid), "{rows:?}");

    // ss's habits: -tlnp is the same listener with its owner and no
    // service names; --unit and --pid keep it, with or without `.service`,
    // and drop every other socket of the namespace.
    let netns = ["--daemon", DAEMON, "--netns", &ns.name];
    let rows = table(&portmon_ports(&[&netns[..], &["-tlnp"]].concat()));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["UNIT"], cgroup.unit, "{rows:?}");
    assert!(!rows[0].contains_key("SERVICE"), "-n: {rows:?}");
    let unit_name = cgroup.unit.trim_end_matches(".service");
    let pid = service.pid.to_string();
    for filter in [
        ["--unit", cgroup.unit.as_str()],
        ["--unit", unit_name],
        ["--pid", pid.as_str()],
    ] {
        let kept = json(&portmon_ports(&[&netns[..], &filter, &["--json"]].concat()));
        assert_eq!(kept.len(), 1, "{filter:?}: {kept:?}");
        assert_eq!(kept[0]["port"], UNIT_PORT, "{filter:?}: {kept:?}");
    }
    let none = json(&portmon_ports(&[&netns[..], &["--pid", "1", "--json"]].concat()));
    assert!(none.is_empty(), "--pid 1 owns nothing here: {none:?}");
    let headless = portmon_ports(&[&netns[..], &["-tlH"]].concat());
    assert_eq!(headless.lines().count(), 1, "-H: {headless}");
    assert!(
        headless.contains(&port) && !headless.contains("NETNS"),
        "{headless}"
    );
    drop((service, cgroup, daemon));
}

#[test]
fn ports_finds_the_daemon_through_its_configuration_file() {
    let _serial = serial();
    let ns = NamedNetns::create("ports-config");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let made = ns.enter(make_sockets);
    let config = std::env::temp_dir().join(format!("portmon-ports-{}.toml", std::process::id()));
    let config_arg = config.display().to_string();
    let listeners = |listen: &str| -> Vec<Value> {
        std::fs::write(&config, format!("listen = \"{listen}\"\n")).expect("write config");
        json(&portmon_ports(&[
            "--config",
            &config_arg,
            "--netns",
            &ns.name,
            "--listening",
            "--json",
        ]))
    };
    let want: Vec<Row> = made.rows.iter().filter(|r| r.listening()).cloned().collect();

    // Whether the daemon answered shows in its count of snapshots: a
    // scrape takes one, and a listing it answered one more.
    let snapshots =
        || metric_value(&daemon.scrape(), "portmon_snapshots_total", &[]).expect("portmon_snapshots_total");
    let before = snapshots();
    let asked = listeners(DAEMON);
    assert_eq!(snapshots() - before, 2.0, "the daemon answered");
    assert_eq!(sorted(asked.iter().map(json_row).collect()), want);
    assert!(
        asked.iter().all(|e| e["owner"]["pid"] == std::process::id()),
        "{asked:?}"
    );

    // No daemon at the configured address: a snapshot of its own, with the
    // owners it finds among every process's descriptors.
    let before = snapshots();
    let alone = listeners("127.0.0.1:9");
    assert_eq!(snapshots() - before, 1.0, "the daemon was not asked");
    assert_eq!(sorted(alone.iter().map(json_row).collect()), want);
    assert!(
        alone.iter().all(|e| e["owner"]["pid"] == std::process::id()),
        "{alone:?}"
    );
    let _ = std::fs::remove_file(&config);
    drop((made, daemon));
}

/// `ss -tanH` in a namespace, as rows: TCP sockets other than listeners,
/// each state named as portmon names it.
fn ss_connections(ns: &NamedNetns) -> Vec<Row> {
    let rows = ns
        .exec("ss", &["-tanH"])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [state, _, _, local, remote, ..] = fields.as_slice() else {
                return None;
            };
            let state = match *state {
                "LISTEN" => return None,
                "ESTAB" => "established".to_owned(),
                other => other.to_lowercase().replace('-', "_"),
            };
            let address = |text: &str| text.replace("%lo", "");
            Some(Row {
                proto: "tcp".into(),
                state: state.replace("_wait_", "_wait"),
                local: address(local),
                remote: address(remote),
            })
        })
        .collect();
    sorted(rows)
}

/// Connections, v4 and v6, some closed into TIME_WAIT, in the calling
/// thread's namespace; the open ones are kept.
fn make_connections() -> Vec<Box<dyn Send>> {
    let mut keep: Vec<Box<dyn Send>> = Vec::new();
    for host in ["127.0.0.1", "::1"] {
        let listener = TcpListener::bind((host, 0)).expect("listen");
        let at = listener.local_addr().unwrap();
        for i in 0..4 {
            let client = TcpStream::connect(at).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            if i < 2 {
                // The client closes first: its end waits in TIME_WAIT.
                drop(client);
                let mut buf = [0u8; 1];
                let _ = std::io::Read::read(&mut &server, &mut buf);
                drop(server);
            } else {
                keep.push(Box::new(client));
                keep.push(Box::new(server));
            }
        }
        keep.push(Box::new(listener));
    }
    keep
}

#[test]
fn every_namespaces_connections_from_one_walk_of_the_host_table_match_ss() {
    let _serial = serial();
    let check = Command::new(portmon_tests::portmon_bin())
        .arg("check")
        .output()
        .expect("portmon check");
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    let walk_line = check
        .lines()
        .find(|l| l.contains("walk_established"))
        .unwrap_or_else(|| panic!("portmon check says nothing of the walk:\n{check}"))
        .to_owned();
    let walks = walk_line.starts_with("ok");
    let namespaces = [NamedNetns::create("walk-a"), NamedNetns::create("walk-b")];
    let _kept: Vec<_> = namespaces.iter().map(|ns| ns.enter(make_connections)).collect();
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let walked = metric_value(&daemon.scrape(), "portmon_inventory_walked", &[]);
    if walks {
        assert_eq!(
            walked,
            Some(1.0),
            "the walk loads here but the snapshot did not use it"
        );
    } else {
        assert_eq!(walked, Some(0.0));
        println!("the walk does not run on this kernel, the dumps are checked instead: {walk_line}");
    }
    for ns in &namespaces {
        let listed: Vec<Row> = json(&portmon_ports(&[
            "--daemon", DAEMON, "--netns", &ns.name, "--json",
        ]))
        .iter()
        .map(json_row)
        .filter(|r| r.proto == "tcp" && r.state != "listen")
        .collect();
        let listed = sorted(listed);
        assert_eq!(
            listed.len(),
            12,
            "4 open ends and 2 TIME_WAITs per family: {listed:#?}"
        );
        assert_eq!(listed, ss_connections(ns), "{}", ns.name);
    }
    assert_eq!(
        metric_value(&daemon.scrape(), "portmon_inventory_walk_errors_total", &[]),
        Some(0.0)
    );
    drop(daemon);
}
