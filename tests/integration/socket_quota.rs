//! The slots of `SOCKETS`, which every namespace shares: an unprivileged
//! user holding bound sockets by the thousand keeps its quota of them, so
//! another user's failed bind is still followed and reported; the ids a
//! user maps into a user namespace of its own count as that user; and a
//! user's slots come back as its sockets close.

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use portmon::{failures::Errno, kernel::bpf::LoadOptions};
use portmon_common::{Op, Proto};
use portmon_tests::{as_host_user, serial, wait_until, Monitor};

/// Small, so that a user's quota is a few slots: 1,024 slots, 896 of which
/// hold sockets, 2% of them (17) to each unprivileged user. The holders
/// bind more sockets than there are slots: without the quota they would
/// fill the table, and the other user's bind would go unfollowed.
fn options() -> LoadOptions {
    LoadOptions {
        sockets: 1024,
        owner_percent: 2,
        ..LoadOptions::default()
    }
}

/// Binds UDP sockets to port 0 on the loopback and holds them, printing
/// their ports on one line, until its input closes.
const HOLDER: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
held = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held), flush=True)
sys.stdin.read()
"#;

/// Binds a UDP socket to the port given, held by another user: prints the
/// errno the bind failed with.
const BUSY_BIND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    print(0)
except OSError as e:
    print(e.errno)
s.close()
"#;

/// As root, a user namespace made as a rootless container's is: user 65534
/// makes it, and its ids 0 to N-1 are mapped to host ids from 300,000 (as
/// `newuidmap` maps a user's subordinate ids). Each of the N ids then runs
/// `HOLDER`'s loop, printing a line of ports each.
const MANY_IDS: &str = r#"
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
ids, n = int(sys.argv[1]), int(sys.argv[2])
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    if libc.unshare(0x10000000) != 0:
        sys.exit("unshare: %d" % ctypes.get_errno())
    os.write(ready_w, b"u")
    os.read(go_r, 1)
    for k in range(ids):
        if os.fork() == 0:
            os.setgid(k)
            os.setuid(k)
            held = []
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                held.append(s)
            # One write, so that the ids' lines never interleave.
            os.write(1, (" ".join(str(s.getsockname()[1]) for s in held) + "\n").encode())
            sys.stdin.read()
            os._exit(0)
    for _ in range(ids):
        os.wait()
    os._exit(0)
os.read(ready_r, 1)
for name in ("uid_map", "gid_map"):
    with open("/proc/%d/%s" % (pid, name), "w") as f:
        f.write("0 300000 %d\n" % ids)
os.write(go_w, b"g")
os.waitpid(pid, 0)
"#;

/// `script` as host user `uid`, on the host's namespaces.
fn as_user(uid: u32, script: &str, args: &[&str]) -> Command {
    let mut command = as_host_user(uid);
    command.args(["python3", "-c", script]).args(args);
    command
}

/// Holders started and holding: the ports of each line they printed.
struct Holders {
    child: Child,
    ports: HashSet<u16>,
}

impl Holders {
    fn start(mut command: Command, lines: usize) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the holders (setpriv, python3)");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut ports = HashSet::new();
        for _ in 0..lines {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("a holder's ports");
            let held: Vec<u16> = line
                .split_whitespace()
                .map(|p| p.parse().expect("a port"))
                .collect();
            assert!(!held.is_empty(), "a holder failed: {line:?}");
            ports.extend(held);
        }
        Self { child, ports }
    }

    /// Sockets of the holders the kernel programs follow.
    fn followed(&self, monitor: &Monitor) -> usize {
        let host = portmon::kernel::netns::current_cookie().expect("host cookie");
        monitor
            .followed()
            .iter()
            .filter(|f| f.slot.netns == host && f.slot.proto == Proto::Udp.raw())
            .filter(|f| f.holds_local().is_some_and(|port| self.ports.contains(&port)))
            .count()
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for the holders");
        assert!(status.success(), "the holders failed: {status}");
    }
}

#[test]
fn a_user_holding_thousands_of_sockets_keeps_its_quota_and_anothers_failed_bind_is_reported() {
    let _serial = serial();
    let options = options();
    let quota = options.owner_quota().sockets as usize;
    let mut monitor = Monitor::attach_with(options);
    let before = monitor.health();
    let holder = Holders::start(as_user(65534, HOLDER, &["3000"]), 1);
    let held = holder.followed(&monitor);
    let filled = monitor.health();
    assert!(
        held <= quota && filled.owner_quota_refused - before.owner_quota_refused >= (3000 - quota) as u64,
        "uid 65534 holds {held} slots of its 3000 sockets, quota {quota}: {filled:?}"
    );
    // A port uid 65534 holds, bound again by another user: EADDRINUSE,
    // reported when the socket closes.
    let port = *holder.ports.iter().next().expect("a port");
    let out = as_user(65533, BUSY_BIND, &[&port.to_string()])
        .output()
        .expect("run the other user's bind");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "98",
        "the bind on a held port"
    );
    let host = portmon::kernel::netns::current_cookie().expect("host cookie");
    let reported = wait_until(Duration::from_secs(5), || {
        monitor
            .failures_in(host, 1)
            .iter()
            .any(|f| f.uid == 65533 && f.port == port)
    });
    let failures: Vec<_> = monitor
        .failures_in(host, 1)
        .into_iter()
        .filter(|f| f.uid == 65533 && f.port == port)
        .collect();
    assert!(
        reported && failures.len() == 1,
        "uid 65533's failed bind on port {port}, held by uid 65534: {failures:#?} {:?}",
        monitor.health()
    );
    assert_eq!(
        (failures[0].op, failures[0].errno, failures[0].proto),
        (Op::Bind, Errno::AddrInUse, Proto::Udp)
    );
    holder.stop();
    // Its slots came back: the same user holds its whole quota again.
    let refused = monitor.health().owner_quota_refused;
    let again = Holders::start(as_user(65534, HOLDER, &[&quota.to_string()]), 1);
    let held_again = again.followed(&monitor);
    again.stop();
    assert_eq!(
        (held_again, monitor.health().owner_quota_refused),
        (quota, refused),
        "uid 65534's slots after its sockets closed, quota {quota}"
    );
    println!(
        "uid 65534: {held} of 3000 sockets followed (quota {quota}), {} refused; uid 65533's EADDRINUSE \
         on port {port} reported; the quota came back",
        filled.owner_quota_refused - before.owner_quota_refused
    );
}

#[test]
fn the_ids_a_user_maps_into_its_user_namespace_share_its_quota() {
    let _serial = serial();
    let options = options();
    let quota = options.owner_quota().sockets as usize;
    let monitor = Monitor::attach_with(options);
    let ids = 8;
    let mut command = Command::new("python3");
    command.args(["-c", MANY_IDS, &ids.to_string(), "40"]);
    let holders = Holders::start(command, ids);
    let held = holders.followed(&monitor);
    holders.stop();
    // Each id alone would have held its own quota.
    assert!(
        held <= quota,
        "{ids} ids of uid 65534's user namespace hold {held} slots, quota {quota}"
    );
    assert!(held > 0, "no socket of the user namespace followed");
    println!("{ids} ids of uid 65534's user namespace, 40 sockets each: {held} followed (quota {quota})");
}
