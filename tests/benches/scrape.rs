//! The exporter with over 100,000 sockets in one network namespace: how
//! long a scrape of /metrics takes (against `ss -tan` listing the same
//! sockets, in the same run), how much of it is gathering and the ephemeral
//! pool assessment, the daemon's resident memory, and its CPU use when idle.
//! Each scrape's socket counts must equal what `ss` lists, or the bench
//! fails. The scrapes are taken twice: with no TCP socket bound and idle on
//! the host (the kernel's counters say so, and the walk of the bind table
//! that finds such sockets is left out), then with one. Needs root. Run
//! with `cargo xtask bench`.
//!
//! A process may hold only 20,000 descriptors here (the hard limit, which
//! root without CAP_SYS_RESOURCE cannot raise), so the established
//! connections are held by child processes: this binary run again with
//! `--hold`, each entering the namespace and holding its own listeners and
//! both ends of its connections until its stdin closes.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use portmon_tests::{http_get, metric_value, Daemon, NamedNetns};

/// Child processes holding established connections...
const HOLDERS: usize = 8;
/// ...each with this many (two sockets, two descriptors each)...
const PAIRS_PER_HOLDER: usize = 6_250;
/// ...spread over its share of the listeners (the destinations).
const DESTINATIONS: usize = 1_000;
const FIRST_LISTENER_PORT: u16 = 20_000;
/// Connections closed by the client, left in TIME_WAIT (no descriptor).
/// They last 60 s: made last, and the scrapes are over well before.
const TIME_WAIT: usize = 2_000;
/// UDP sockets, half bound and unconnected, half connected.
const UDP: usize = 1_000;
const EPHEMERAL_RANGE: &str = "30000 65535";
const RUNS: usize = 15;
const IDLE: Duration = Duration::from_secs(20);
const DAEMON: &str = "127.0.0.1:17480";

#[path = "scrape/namespaces.rs"]
mod namespaces;

/// Selects one part: `one` (the sockets of one namespace, against `ss`) or
/// `namespaces` (one namespace against many); both by default.
const PART_VAR: &str = "PORTMON_SCRAPE_BENCH";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--hold") {
        let arg = |i: usize| args.get(at + i).expect("--hold NETNS FIRST_PORT LISTENERS PAIRS");
        let number = |i: usize| arg(i).parse::<usize>().expect("a number");
        hold(arg(1), number(2) as u16, number(3), number(4));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--hold-in") {
        let number = |i: usize| {
            args.get(at + i)
                .and_then(|a| a.parse::<usize>().ok())
                .expect("--hold-in FIRST_PORT LISTENERS PAIRS NETNS...")
        };
        namespaces::hold_in(number(1) as u16, number(2), number(3), &args[at + 4..]);
        return;
    }
    let part = std::env::var(PART_VAR).unwrap_or_default();
    match part.as_str() {
        "one" => bench(),
        "namespaces" => namespaces::bench(),
        "" => {
            bench();
            namespaces::bench();
        }
        other => {
            eprintln!("{PART_VAR}={other}: say `one` or `namespaces`, or leave it unset for both");
            std::process::exit(64);
        }
    }
}

fn bench() {
    raise_fd_limit();
    // Built before the workload: TIME_WAIT sockets do not wait for a build.
    portmon_tests::portmon_bin();
    let ns = NamedNetns::create("scrape-bench");
    ns.enter(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", EPHEMERAL_RANGE).expect("port range");
        // Loopback connects would otherwise reuse TIME_WAIT 4-tuples (tcp_tw_reuse=2).
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0").expect("tw reuse");
    });
    let connecting = Instant::now();
    let holders = spawn_holders(&ns.name);
    println!(
        "{} connections made by {HOLDERS} processes in {:.1} s",
        HOLDERS * PAIRS_PER_HOLDER,
        connecting.elapsed().as_secs_f64()
    );
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let pid = daemon.child.id();
    let (udp, (tw_listener, time_wait_made)) = ns.enter(|| (udp_sockets(), time_wait()));

    // A first scrape opens what the daemon keeps; not measured.
    let _ = http_get(daemon.addr, "/metrics").expect("scrape");
    // The daemon's view, from the two namespaces it watches here.
    let (in_bench, _) = ns.enter(tcp_counts);
    let (in_host, on_host) = tcp_counts();
    let counters_agree = in_bench + in_host == on_host;
    let without: Vec<Run> = (0..RUNS).map(|_| Run::measure(&daemon, &ns, 0)).collect();
    let bound = ns.enter(|| bound_idle(FIRST_LISTENER_PORT - 2));
    let with: Vec<Run> = (0..RUNS).map(|_| Run::measure(&daemon, &ns, 1)).collect();
    assert!(
        time_wait_made.elapsed() < Duration::from_secs(55),
        "the scrapes took so long that TIME_WAIT sockets may have expired in between"
    );
    let rss_mib = status_kib(pid, "VmRSS:") as f64 / 1024.0;
    let hwm_mib = status_kib(pid, "VmHWM:") as f64 / 1024.0;
    let cpu_before = cpu_seconds(pid);
    std::thread::sleep(IDLE);
    let idle_share = (cpu_seconds(pid) - cpu_before) / IDLE.as_secs_f64();
    report(&without, counters_agree, &with);
    report_costs(rss_mib, hwm_mib, idle_share);
    drop(daemon);
    drop((udp, tw_listener, bound));
    drop(holders);
}

/// One scrape and one `ss` right after it, with what each counted.
struct Run {
    scrape_ms: f64,
    gather_ms: f64,
    assessment_ms: f64,
    ss_ms: f64,
    bytes: usize,
    counts: Counts,
}

/// Sockets of the bench namespace by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// TCP sockets as `ss -tan` lists them.
    tcp: u64,
    established: u64,
    listen: u64,
    time_wait: u64,
    /// Bound, neither listening nor connected: `ss` does not list them.
    bound: u64,
    udp: u64,
}

impl Run {
    /// `bound`: how many bound and idle sockets the namespace has.
    fn measure(daemon: &Daemon, ns: &NamedNetns, bound: u64) -> Self {
        let started = Instant::now();
        let (status, body) = http_get(daemon.addr, "/metrics").expect("scrape");
        let scrape_ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 200);
        let value = |name: &str| metric_value(&body, name, &[]).unwrap_or_else(|| panic!("no {name}"));
        let destinations = body
            .lines()
            .filter(|l| l.starts_with("portmon_ephemeral_destination_utilization_ratio{"))
            .count();
        assert_eq!(destinations, 10, "the top 10 of {DESTINATIONS} destinations");

        let started = Instant::now();
        let tcp = ns.enter(|| command_output("ss", &["-tanH"]));
        let ss_ms = started.elapsed().as_secs_f64() * 1e3;
        let udp = ns.enter(|| command_output("ss", &["-uanH"]));
        let listed = Counts {
            bound,
            ..Counts::from_ss(&tcp, &udp)
        };
        let counts = Counts::from_metrics(&body, &ns.name);
        assert_eq!(counts, listed, "the scrape counted other sockets than ss lists");
        Self {
            scrape_ms,
            gather_ms: value("portmon_scrape_duration_seconds") * 1e3,
            assessment_ms: value("portmon_ephemeral_assessment_seconds") * 1e3,
            ss_ms,
            bytes: body.len(),
            counts,
        }
    }
}

impl Counts {
    fn from_ss(tcp: &str, udp: &str) -> Self {
        let state = |want: &str| tcp.lines().filter(|l| l.starts_with(want)).count() as u64;
        Self {
            tcp: tcp.lines().count() as u64,
            established: state("ESTAB "),
            listen: state("LISTEN "),
            time_wait: state("TIME-WAIT "),
            bound: 0,
            udp: udp.lines().count() as u64,
        }
    }

    /// Sums `portmon_sockets` of one namespace, folded series included.
    fn from_metrics(body: &str, netns: &str) -> Self {
        let netns = format!("netns=\"{netns}\"");
        let mut counts = Self::default();
        for line in body.lines() {
            let Some((labels, value)) = line
                .strip_prefix("portmon_sockets{")
                .and_then(|series| series.rsplit_once("} "))
            else {
                continue;
            };
            if !labels.split(',').any(|l| l == netns) {
                continue;
            }
            let n: u64 = value.trim().parse().expect("a count");
            let has = |label: &str| labels.split(',').any(|l| l == label);
            if has("proto=\"udp\"") {
                counts.udp += n;
                continue;
            }
            if has("state=\"bound\"") {
                counts.bound += n;
                continue;
            }
            counts.tcp += n;
            if has("state=\"established\"") {
                counts.established += n;
            } else if has("state=\"listen\"") {
                counts.listen += n;
            } else if has("state=\"time_wait\"") {
                counts.time_wait += n;
            }
        }
        counts
    }
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(without: &[Run], counters_agree: bool, with: &[Run]) {
    let c = without[0].counts;
    println!(
        "scrape with {} sockets in one namespace ({} TCP: {} established, {} listening, {} TIME_WAIT; \
         {} UDP; every scrape's counts equal to ss's), {} bytes of exposition, {RUNS} runs each:",
        c.tcp + c.udp,
        c.tcp,
        c.established,
        c.listen,
        c.time_wait,
        c.udp,
        without[0].bytes
    );
    let ss = percentile(&field(without, |r| r.ss_ms), 0.5);
    let cases = [
        (
            without,
            if counters_agree {
                "no socket bound and idle (the kernel's counters agree: that walk left out)"
            } else {
                "no socket bound and idle here (but the kernel's counters do not agree: that walk kept)"
            },
        ),
        (
            with,
            "one socket bound and idle (every namespace's bind table walked too)",
        ),
    ];
    for (runs, case) in cases {
        let scrape = field(runs, |r| r.scrape_ms);
        let median = percentile(&scrape, 0.5);
        println!("  {case}:");
        println!(
            "    /metrics median {median:.1} ms, p90 {:.1} ms, max {:.1} ms; target < 100 ms: {}",
            percentile(&scrape, 0.9),
            percentile(&scrape, 1.0),
            met(median < 100.0)
        );
        println!(
            "    gathering (kernel maps, sock_diag, assessment) median {:.1} ms, of which the ephemeral \
             pool assessment ({DESTINATIONS} destinations) {:.1} ms; scrape/ss ratio {:.2}",
            percentile(&field(runs, |r| r.gather_ms), 0.5),
            percentile(&field(runs, |r| r.assessment_ms), 0.5),
            median / ss
        );
    }
    println!("  ss -tan median {ss:.1} ms");
}

fn report_costs(rss_mib: f64, hwm_mib: f64, idle_share: f64) {
    println!(
        "  daemon VmRSS {rss_mib:.1} MiB, VmHWM {hwm_mib:.1} MiB; target < 64 MiB: {}",
        met(hwm_mib < 64.0)
    );
    println!(
        "  idle CPU {:.2}% of a core over {} s; target < 1%: {}",
        idle_share * 100.0,
        IDLE.as_secs(),
        met(idle_share < 0.01)
    );
}

fn field(runs: &[Run], f: fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().map(f).collect()
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "NOT met"
    }
}

/// The holder processes, each ready (its connections established).
struct Holders(Vec<Child>);

impl Holders {
    /// Waits for each holder to say it holds its sockets.
    fn wait_ready(&mut self) {
        for child in &mut self.0 {
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().expect("holder stdout"))
                .read_line(&mut line)
                .expect("read from a holder");
            assert_eq!(line.trim(), "ready", "a holder failed");
        }
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

fn spawn_holders(netns: &str) -> Holders {
    let exe = std::env::current_exe().expect("own path");
    let listeners = DESTINATIONS / HOLDERS;
    let mut holders = Holders(Vec::new());
    for i in 0..HOLDERS {
        let first_port = FIRST_LISTENER_PORT as usize + i * listeners;
        let child = Command::new(&exe)
            .args(["--hold", netns])
            .args([first_port, listeners, PAIRS_PER_HOLDER].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a holder");
        holders.0.push(child);
    }
    holders.wait_ready();
    holders
}

/// The child's side: enters the namespace, listens on `listeners` ports from
/// `first_port`, makes `pairs` connections to them, says `ready` and holds
/// everything until stdin closes.
fn hold(netns: &str, first_port: u16, listeners: usize, pairs: usize) {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).expect("open the namespace");
    // SAFETY: a valid namespace fd; this process has one thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    raise_fd_limit();
    let listening: Vec<TcpListener> = (0..listeners)
        .map(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, first_port + i as u16)).expect("listen"))
        .collect();
    let mut held = Vec::with_capacity(2 * pairs);
    for i in 0..pairs {
        let listener = &listening[i % listeners];
        held.push(TcpStream::connect(listener.local_addr().unwrap()).expect("connect"));
        held.push(listener.accept().expect("accept").0);
    }
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
}

/// Half bound to an ephemeral port, half connected (auto-bound).
fn udp_sockets() -> Vec<UdpSocket> {
    (0..UDP)
        .map(|i| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp bind");
            if i % 2 == 1 {
                socket
                    .connect((Ipv4Addr::LOCALHOST, FIRST_LISTENER_PORT + (i % 10) as u16))
                    .expect("udp connect");
            }
            socket
        })
        .collect()
}

/// Leaves TIME_WAIT sockets behind (the client closes first); returns their
/// listener, held (it counts among the sockets too), and when.
fn time_wait() -> (TcpListener, Instant) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, FIRST_LISTENER_PORT - 1)).expect("listen");
    for _ in 0..TIME_WAIT {
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop(client);
        let _ = (&server).read(&mut [0u8; 1]);
    }
    (listener, Instant::now())
}

/// A TCP socket bound to `port` and left there, neither listening nor
/// connected.
fn bound_idle(port: u16) -> OwnedFd {
    // SAFETY: socket(2) and bind(2) on a socket owned below, with an
    // address of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }
}

/// TCP sockets of the calling thread's namespace in the listening and
/// established tables, both families, and TCP sockets of the whole host,
/// from `/proc/net/sockstat` (`inuse`, `alloc`) and `sockstat6`: what
/// portmon adds up over every namespace before it leaves out the walk for
/// bound and idle sockets.
fn tcp_counts() -> (u64, u64) {
    let read =
        |file: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default();
    let field = |text: &str, line: &str, name: &str| -> u64 {
        let words: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1)?.parse().ok())
            .unwrap_or(0)
    };
    let (v4, v6) = (read("sockstat"), read("sockstat6"));
    let hashed = field(&v4, "TCP:", "inuse") + field(&v6, "TCP6:", "inuse");
    (hashed, field(&v4, "TCP:", "alloc"))
}

fn command_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let want = 2 * PAIRS_PER_HOLDER + DESTINATIONS / HOLDERS + 64;
    // SAFETY: valid rlimit structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        // Root may raise the hard limit where it holds CAP_SYS_RESOURCE (a
        // guest's init); elsewhere the soft one goes up to the hard one.
        let raised = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: want as libc::rlim_t,
        };
        if limit.rlim_max >= raised.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    assert!(limit.rlim_cur as usize >= want, "need {want} open files");
}

/// (utime + stime) of a process, its exited threads included, in seconds:
/// 10 ms ticks, a resolution of 0.05% over the idle time measured.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (proc(5)).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
