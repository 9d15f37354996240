//! Unprivileged users filling portmon's kernel maps from network
//! namespaces of their own (in user namespaces of their own, as anyone may
//! make them): they cannot stop the binds of the host's namespace, of one
//! root made (a pod's), or of another unprivileged user's from being
//! counted, and a user's share comes back when its namespaces go.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use portmon::kernel::bpf::LoadOptions;
use portmon_common::{Assignment, Family, Proto, Role};
use portmon_tests::{
    as_host_user, binds_outside_host, in_fresh_netns, metric_value, serial, wait_until, Daemon, Monitor,
};

const LISTEN: &str = "127.0.0.1:17494";

/// Binds many ports in each of many namespaces, as an unprivileged user
/// would: in a user namespace of its own, a new network namespace for
/// every round. Binds to port 0 take a pool each.
const FILLER: &str = r#"
import ctypes, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
for _ in range(int(sys.argv[1])):
    if libc.unshare(CLONE_NEWNET) != 0:
        sys.exit("unshare: %d" % ctypes.get_errno())
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        for k in range(int(sys.argv[2])):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("0.0.0.0", 1024 + 64 * k))
            s.close()
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("0.0.0.0", 0))
        s.close()
"#;

#[test]
fn an_unprivileged_user_filling_the_maps_cannot_stop_the_hosts_or_a_pods_counts() {
    let _serial = serial();
    // Small maps, so that the filler fills them in seconds; no daemon to
    // give anything back.
    let monitor = Monitor::attach_with(LoadOptions {
        port_tables: 64,
        port_stats: 256,
        pools: 64,
        ..LoadOptions::default()
    });
    let before = monitor.health();
    let status = as_user(65534, false, FILLER, &["100", "40"])
        .stdout(Stdio::null())
        .status()
        .expect("run the filler (setpriv, unshare, python3)");
    assert!(status.success(), "the filler failed: {status}");
    let after = monitor.health();
    assert!(
        after.port_tables_overflow > before.port_tables_overflow
            && after.pools_overflow > before.pools_overflow,
        "the filler did not fill PORT_TABLES and POOL_KEYS: {after:?}"
    );
    // A new port in the host's namespace (the test's), all four tables.
    let host = portmon::kernel::netns::current_cookie().expect("host cookie");
    let port = 40_000 + (std::process::id() % 5_000) as u16;
    bind_each(port);
    for (proto, family, n) in MADE {
        let stats = monitor.stats(host, proto, family, Role::Local, port);
        assert_eq!(
            stats.binds, n,
            "{proto:?} {family:?} binds on the host's port {port}"
        );
    }
    let (pod, want) = binds_in_a_root_made_namespace(port);
    let lost = monitor.health();
    for (proto, family, n) in MADE {
        let stats = monitor.stats(pod, proto, family, Role::Local, port);
        assert_eq!(
            stats.binds, n,
            "{proto:?} {family:?} binds on port {port} in a namespace root made, \
             after an unprivileged user filled the shared entries: {lost:?}"
        );
    }
    for (proto, how, n) in want {
        assert_eq!(
            monitor.assigned(pod, proto, Family::Inet, how),
            n,
            "{proto:?} ports handed out {how:?} in the namespace root made: {lost:?}"
        );
    }
    assert!(
        lost.reserved_tables_taken > 0 && lost.reserved_blocks_taken > 0 && lost.reserved_pools_taken > 0,
        "the namespace root made took nothing from the reserve: {lost:?}"
    );
    println!(
        "filler: PORT_TABLES lost {} counts, PORT_STATS {}, POOL_KEYS {}; the binds on port {port} \
         of the host and of a namespace root made all counted",
        after.port_tables_overflow - before.port_tables_overflow,
        after.port_stats_overflow - before.port_stats_overflow,
        after.pools_overflow - before.pools_overflow,
    );
}

/// As another unprivileged user, in a user and network namespace of its
/// own: the binds of `MADE` on the port given, on the wildcard addresses
/// (the new namespace's loopback is down), then a TCP and a UDP bind to
/// port 0. Prints the namespace's cookie (`SO_NETNS_COOKIE`) and holds
/// the namespace until its input closes.
const OTHER_USER: &str = r#"
import socket, struct, sys
port = int(sys.argv[1])
for kind, family, addr, n in ((socket.SOCK_STREAM, socket.AF_INET, "0.0.0.0", 3),
                              (socket.SOCK_STREAM, socket.AF_INET6, "::", 2),
                              (socket.SOCK_DGRAM, socket.AF_INET, "0.0.0.0", 4),
                              (socket.SOCK_DGRAM, socket.AF_INET6, "::", 5)):
    for _ in range(n):
        s = socket.socket(family, kind)
        s.bind((addr, port))
        s.close()
held = [socket.socket(socket.AF_INET, kind) for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)]
for s in held:
    s.bind(("0.0.0.0", 0))
print(struct.unpack("=Q", held[0].getsockopt(socket.SOL_SOCKET, 71, 8))[0], flush=True)
sys.stdin.read()
"#;

#[test]
fn one_unprivileged_user_filling_the_shared_entries_cannot_stop_anothers_counts() {
    let _serial = serial();
    let options = LoadOptions {
        port_tables: 64,
        port_stats: 256,
        pools: 64,
        ..LoadOptions::default()
    };
    let quota = options.owner_quota();
    let monitor = Monitor::attach_with(options);
    let before = monitor.health();
    let filler = as_user(65534, false, FILLER, &["100", "40"])
        .stdout(Stdio::null())
        .status()
        .expect("run the filler (setpriv, unshare, python3)");
    assert!(filler.success(), "the filler failed: {filler}");
    let filled = monitor.health();
    assert!(
        filled.owner_quota_refused > before.owner_quota_refused,
        "the filler never reached its quota: {filled:?}"
    );
    // The filler's user holds its quota of the shared entries, no more.
    assert!(
        filled.port_tables_taken - before.port_tables_taken <= u64::from(quota.tables)
            && filled.pools_taken - before.pools_taken <= u64::from(quota.pools)
            && filled.port_blocks_taken - before.port_blocks_taken <= u64::from(quota.blocks),
        "the filler took more than its quota {quota:?}: {filled:?}"
    );
    let port = 41_000 + (std::process::id() % 5_000) as u16;
    let out = as_user(65533, true, OTHER_USER, &[&port.to_string()])
        .output()
        .expect("run the other user's binds");
    assert!(
        out.status.success(),
        "the other user's binds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cookie: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the other user's namespace cookie");
    let after = monitor.health();
    for (proto, family, n) in MADE {
        let stats = monitor.stats(cookie, proto, family, Role::Local, port);
        assert_eq!(
            stats.binds, n,
            "{proto:?} {family:?} binds on port {port} of another unprivileged user, \
             after the first filled its share: {after:?}"
        );
    }
    for proto in [Proto::Tcp, Proto::Udp] {
        assert_eq!(
            monitor.assigned(cookie, proto, Family::Inet, Assignment::Bind),
            1,
            "{proto:?} ports handed out by bind in the other user's namespace: {after:?}"
        );
    }
    assert_eq!(
        after.owners_taken - before.owners_taken,
        2,
        "two users charged: {after:?}"
    );
    println!(
        "filler (uid 65534): {} refusals past its quota {quota:?}; the other user's (uid 65533) binds \
         on port {port} and its pools all counted",
        filled.owner_quota_refused - before.owner_quota_refused,
    );
}

/// Runs `script` as user `uid`, in a user namespace of its own (and a
/// network namespace, with `new_netns`).
fn as_user(uid: u32, new_netns: bool, script: &str, args: &[&str]) -> Command {
    let mut command = as_host_user(uid);
    command
        .args(["unshare", "--user", "--map-root-user"])
        .args(new_netns.then_some("--net"))
        .args(["--", "python3", "-c", script])
        .args(args);
    command
}

#[test]
fn an_unprivileged_users_share_comes_back_when_its_namespaces_go() {
    let _serial = serial();
    // 256 blocks and 64 tables: a user's share is 8 tables, which the
    // filler's namespaces fill at once.
    let daemon = Daemon::start(
        LISTEN.parse().unwrap(),
        &["--port-stats-capacity", "256", "--netns-grace-seconds", "1"],
    );
    let tables =
        |text: &str| metric_value(text, "portmon_map_entries", &[("map", "PORT_TABLES")]).unwrap_or(0.0);
    let idle = tables(&daemon.scrape());
    let filler = as_user(65534, false, FILLER, &["100", "40"])
        .stdout(Stdio::null())
        .status()
        .expect("run the filler (setpriv, unshare, python3)");
    assert!(filler.success(), "the filler failed: {filler}");
    let text = daemon.scrape();
    let refused = metric_value(&text, "portmon_user_quota_refusals_total", &[]).unwrap_or(0.0);
    assert!(refused > 0.0, "the filler never reached its share:\n{text}");
    // Its namespaces went with it: the daemon gives their entries back, and
    // takes them off the user's share.
    assert!(
        wait_until(Duration::from_secs(30), || tables(&daemon.scrape()) <= idle),
        "the filler's tables were not given back: {} in use, {idle} before",
        tables(&daemon.scrape())
    );
    let port = 46_000 + (std::process::id() % 5_000) as u16;
    let mut holder = as_user(65534, true, OTHER_USER, &[&port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the same user's binds");
    let mut line = String::new();
    let stdout = holder.stdout.take().expect("piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the holder's cookie");
    assert!(line.trim().parse::<u64>().is_ok(), "the holder failed: {line:?}");
    let want = MADE.iter().map(|&(_, _, n)| n).sum::<u64>() as f64;
    let counted = wait_until(Duration::from_secs(10), || {
        binds_outside_host(&daemon.scrape(), port) == Some(want)
    });
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(
        counted,
        "the same user's next namespace, after its last ones went: {:?} binds on port {port}, want {want}",
        binds_outside_host(&daemon.scrape(), port)
    );
    println!(
        "filler: {refused} refusals; its share came back, and {want} binds of its next namespace counted"
    );
}

/// The binds made on a new port in each namespace that must be counted:
/// (protocol, family, how many).
const MADE: [(Proto, Family, u64); 4] = [
    (Proto::Tcp, Family::Inet, 3),
    (Proto::Tcp, Family::Inet6, 2),
    (Proto::Udp, Family::Inet, 4),
    (Proto::Udp, Family::Inet6, 5),
];

/// Makes the binds of `MADE` on `port`, in the thread's namespace.
fn bind_each(port: u16) {
    for (proto, family, n) in MADE {
        let addr: SocketAddr = match family {
            Family::Inet => ([127, 0, 0, 1], port).into(),
            Family::Inet6 => (Ipv6Addr::LOCALHOST, port).into(),
        };
        for _ in 0..n {
            match proto {
                Proto::Tcp => drop(TcpListener::bind(addr).expect("bind")),
                Proto::Udp => drop(UdpSocket::bind(addr).expect("bind")),
            }
        }
    }
}

/// In a namespace made as a container runtime makes one (root, on the
/// host's user namespace): the binds of `MADE` on `port`, then a TCP and a
/// UDP bind to port 0 and a TCP connect. Returns the namespace's cookie and
/// the ports the kernel handed out, by protocol and way.
fn binds_in_a_root_made_namespace(port: u16) -> (u64, [(Proto, Assignment, u64); 3]) {
    let cookie = in_fresh_netns(|ns| {
        bind_each(port);
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(any).expect("bind to port 0");
        drop(UdpSocket::bind(any).expect("bind to port 0"));
        drop(TcpStream::connect(listener.local_addr().expect("address")).expect("connect"));
        ns.cookie
    });
    let want = [
        (Proto::Tcp, Assignment::Bind, 1),
        (Proto::Udp, Assignment::Bind, 1),
        (Proto::Tcp, Assignment::Connect, 1),
    ];
    (cookie, want)
}
