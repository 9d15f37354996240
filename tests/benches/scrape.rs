//! The exporter with 100,000 open sockets on the host, connections spread
//! over 1,000 destinations: how long a scrape of /metrics takes (against
//! `ss -tan` listing the same sockets, in the same run), how much of it the
//! ephemeral pool assessment takes, the daemon's resident memory, and its
//! CPU use when idle. Needs root. Run with `cargo xtask bench`.

use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use portmon_tests::{http_get, metric_value, Daemon, NamedNetns};

/// Established pairs held open (two sockets, two descriptors each)...
const ESTABLISHED: usize = 8_000;
/// ...and connections closed by the client, left in TIME_WAIT, which hold
/// no descriptor: this machine caps a process at 20,000 open files.
/// TIME_WAIT lasts 60 s: a few more than needed, since the oldest expire
/// while the figures are taken.
const TIME_WAIT: usize = 92_000;
const SOCKETS: usize = 2 * ESTABLISHED + TIME_WAIT;
const RUNS: usize = 7;
/// Listeners the connections are spread over.
const DESTINATIONS: usize = 1_000;
const DAEMON: &str = "127.0.0.1:17480";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(
        limit.rlim_cur as usize > 2 * ESTABLISHED + 100,
        "need {} open files",
        2 * ESTABLISHED + 100
    );
}

/// (utime + stime) of a process, in seconds.
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

fn main() {
    raise_fd_limit();
    // Built before the workload: TIME_WAIT sockets do not wait for a build.
    portmon_tests::portmon_bin();
    let ns = NamedNetns::create("scrape-bench");
    let making = Instant::now();
    let sockets = ns.enter(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535").expect("port range");
        std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "400000").expect("tw buckets");
        // Loopback connects would otherwise reuse TIME_WAIT 4-tuples (tcp_tw_reuse=2).
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0").expect("tw reuse");
        let listeners: Vec<TcpListener> = (0..DESTINATIONS as u16)
            .map(|i| TcpListener::bind(("127.0.0.1", 20_000 + i)).expect("listen"))
            .collect();
        for i in 0..TIME_WAIT {
            let listener = &listeners[i % DESTINATIONS];
            let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            drop(client);
            let _ = std::io::Read::read(&mut &server, &mut [0u8; 1]);
        }
        let mut keep = Vec::with_capacity(2 * ESTABLISHED);
        for i in 0..ESTABLISHED {
            let listener = &listeners[i % DESTINATIONS];
            let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            keep.push(client);
            keep.push(server);
        }
        (listeners, keep)
    });
    println!("workload made in {:.1} s", making.elapsed().as_secs_f64());
    let open = ns.exec("ss", &["-tanH"]).lines().count();
    assert!(open >= SOCKETS, "only {open} sockets open, wanted {SOCKETS}");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let pid = daemon.child.id();

    // Scrape and ss alternate, so both see the same sockets.
    let mut scrape = Vec::new();
    let mut assessment = Vec::new();
    let mut gather = Vec::new();
    let mut ss = Vec::new();
    let mut seen = usize::MAX;
    let mut bytes = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let (status, body) = http_get(daemon.addr, "/metrics").expect("scrape");
        scrape.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200);
        bytes = body.len();
        let seconds =
            metric_value(&body, "portmon_ephemeral_assessment_seconds", &[]).expect("assessment time");
        assessment.push(seconds * 1e3);
        let seconds = metric_value(&body, "portmon_scrape_duration_seconds", &[]).expect("gather time");
        gather.push(seconds * 1e3);
        let destinations = body
            .lines()
            .filter(|l| l.starts_with("portmon_ephemeral_destination_utilization_ratio{"))
            .count();
        assert_eq!(destinations, 10, "the top 10 of {DESTINATIONS} destinations");

        let started = Instant::now();
        let out = ns.exec("ss", &["-tanH"]);
        ss.push(started.elapsed().as_secs_f64() * 1e3);
        seen = seen.min(out.lines().count());
    }
    assert!(
        seen >= 100_000,
        "only {seen} sockets left: TIME_WAIT expired too soon"
    );
    let (scrape_ms, ss_ms, assessment_ms) = (median(scrape), median(ss), median(assessment));
    let rss_mib = status_kib(pid, "VmRSS:") as f64 / 1024.0;
    let hwm_mib = status_kib(pid, "VmHWM:") as f64 / 1024.0;

    let idle = Duration::from_secs(10);
    let cpu_before = cpu_seconds(pid);
    std::thread::sleep(idle);
    let idle_share = (cpu_seconds(pid) - cpu_before) / idle.as_secs_f64();

    println!(
        "scrape with {seen}-{open} sockets on the host ({} established, the rest TIME_WAIT; {bytes} bytes of exposition), \
         medians of {RUNS}:",
        2 * ESTABLISHED
    );
    println!(
        "  /metrics {scrape_ms:.1} ms; ss -tan {ss_ms:.1} ms; ratio {:.2}x; target < 100 ms: {}",
        scrape_ms / ss_ms,
        if scrape_ms < 100.0 { "met" } else { "NOT met" }
    );
    println!(
        "  of which gathering (kernel maps, sock_diag, assessment) {:.1} ms, the rest rendering and HTTP",
        median(gather)
    );
    println!(
        "  of which the ephemeral pool assessment ({DESTINATIONS} destinations) {assessment_ms:.1} ms \
         ({:.0}% of the scrape); target < 20 ms: {}",
        100.0 * assessment_ms / scrape_ms,
        if assessment_ms < 20.0 { "met" } else { "NOT met" }
    );
    println!(
        "  daemon RSS {rss_mib:.1} MiB (peak {hwm_mib:.1} MiB); target < 64 MiB: {}",
        if hwm_mib < 64.0 { "met" } else { "NOT met" }
    );
    println!(
        "  idle CPU {:.2}% of a core over {}s; target < 1%: {}",
        idle_share * 100.0,
        idle.as_secs(),
        if idle_share < 0.01 { "met" } else { "NOT met" }
    );
    drop(daemon);
    drop(sockets);
}
