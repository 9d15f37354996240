//! Issue #18's comparison: the same number of sockets in one namespace and
//! spread over many, each layout against a daemon of its own: the scrape's
//! time (median of several) and the daemon's CPU per scrape (its namespace
//! helper included), and their ratio, whose target is at most 1.5.
//!
//! The sockets are held by child processes (this binary again, with
//! `--hold-in`), each under the descriptor limit, each holding listeners and
//! both ends of connections in every namespace it is given.

use std::{
    io::Read as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use portmon_tests::{http_get, metric_value, Daemon, NamedNetns};

use super::{cpu_seconds, met, percentile, raise_fd_limit, Holders};

/// Sockets in each layout.
const SOCKETS: usize = 100_000;
/// Namespaces of the spread layout (500 sockets each).
const SPREAD: usize = 200;
/// Holder processes per layout; each holds `SOCKETS / HOLDERS` descriptors.
const HOLDERS: usize = 8;
/// One listener per this many sockets; the rest are connections' two ends.
const SOCKETS_PER_LISTENER: usize = 250;
const FIRST_PORT: u16 = 20_000;
const RUNS: usize = 9;
const DAEMON: &str = "127.0.0.1:17481";
/// What the issue allows a spread layout's scrape over a single one's.
const TARGET_RATIO: f64 = 1.5;

/// One layout's figures.
struct Costs {
    scrape_ms: f64,
    cpu_ms: f64,
    /// The daemon's own `portmon_scrape_duration_seconds`: reading what a
    /// scrape exports (dumps, walk, procfs, maps), before writing it.
    read_ms: f64,
}

/// Set to a number, the namespaces are made with an established-socket
/// table of that many slots of their own (`net.ipv4.tcp_child_ehash_entries`),
/// instead of sharing the host's, which every namespace's dump walks whole.
const CHILD_EHASH_VAR: &str = "PORTMON_SCRAPE_CHILD_EHASH";
const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";

pub fn bench() {
    raise_fd_limit();
    portmon_tests::portmon_bin();
    let own_tables = std::env::var(CHILD_EHASH_VAR).ok();
    let before = own_tables.as_ref().map(|entries| {
        let before = std::fs::read_to_string(CHILD_EHASH).expect("read tcp_child_ehash_entries");
        std::fs::write(CHILD_EHASH, entries).expect("write tcp_child_ehash_entries");
        println!("namespaces made with tables of their own: tcp_child_ehash_entries {entries}");
        before
    });
    let one = layout(1);
    let spread = layout(SPREAD);
    if let Some(before) = before {
        std::fs::write(CHILD_EHASH, before.trim()).expect("restore tcp_child_ehash_entries");
    }
    println!(
        "scrape of {SOCKETS} sockets, in one namespace and in {SPREAD} of {} each ({RUNS} scrapes each, median):",
        SOCKETS / SPREAD
    );
    for (way, (one, spread)) in WAYS.iter().zip(one.iter().zip(&spread)) {
        let (Some(one), Some(spread)) = (one, spread) else {
            let why = if way.walks {
                "the walk does not run on this kernel"
            } else {
                "a scrape outlasted the daemon's deadline"
            };
            println!("  {}: not measured, {why}", way.name);
            continue;
        };
        let time_ratio = spread.scrape_ms / one.scrape_ms;
        let cpu_ratio = spread.cpu_ms / one.cpu_ms;
        println!("  {}:", way.name);
        println!(
            "    one namespace: /metrics {:.1} ms (reading {:.1} ms), daemon CPU {:.1} ms per scrape",
            one.scrape_ms, one.read_ms, one.cpu_ms
        );
        println!(
            "    {SPREAD} namespaces: /metrics {:.1} ms (reading {:.1} ms), daemon CPU {:.1} ms per scrape",
            spread.scrape_ms, spread.read_ms, spread.cpu_ms
        );
        println!(
            "    ratio: time {time_ratio:.2}, CPU {cpu_ratio:.2}; target <= {TARGET_RATIO}: {}",
            met(time_ratio <= TARGET_RATIO && cpu_ratio <= TARGET_RATIO)
        );
    }
}

/// How the daemon lists connections: the established-table walk where the
/// kernel runs it (portmon's default), and one dump per namespace.
struct Way {
    name: &'static str,
    args: &'static [&'static str],
    walks: bool,
}

const WAYS: [Way; 2] = [
    Way {
        name: "one walk of the established table (the default)",
        args: &[],
        walks: true,
    },
    Way {
        name: "one sock_diag dump per namespace (established-walk = false)",
        args: &["--established-walk", "false"],
        walks: false,
    },
];

/// Creates `namespaces` namespaces sharing `SOCKETS` sockets, and measures
/// scrapes against a fresh daemon for each way; `None` for the walk where
/// it does not run, or for the dumps where a scrape failed.
fn layout(namespaces: usize) -> Vec<Option<Costs>> {
    let made = Instant::now();
    let spaces: Vec<NamedNetns> = (0..namespaces)
        .map(|i| NamedNetns::create(&format!("scrape-ns{namespaces}-{i}")))
        .collect();
    let names: Vec<&str> = spaces.iter().map(|ns| ns.name.as_str()).collect();
    let per_namespace = SOCKETS / namespaces;
    let holders = spawn(&names, per_namespace);
    println!(
        "{namespaces} namespace(s) of {per_namespace} sockets made in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let costs = WAYS.iter().map(|way| measure(way, &names)).collect();
    drop(holders);
    drop(spaces);
    costs
}

fn measure(way: &Way, names: &[&str]) -> Option<Costs> {
    let daemon = Daemon::start(DAEMON.parse().unwrap(), way.args);
    let pid = daemon.child.id();
    // A first scrape opens the namespaces; not measured. Where everything
    // is slow (a guest under TCG) opening 200 may outlast the 10 s the
    // daemon gives an answer: the handles stay open for the next try.
    let body = (0..3)
        .find_map(|_| http_get(daemon.addr, "/metrics").ok().map(|(_, body)| body))
        .expect("no answer to three scrapes");
    let walked = metric_value(&body, "portmon_inventory_walked", &[]) == Some(1.0);
    if walked != way.walks {
        assert!(way.walks, "the walk ran with established-walk = false");
        return None;
    }
    let counted = sockets_in(&body, names);
    assert_eq!(
        counted, SOCKETS as u64,
        "the scrape counted other sockets than were made"
    );
    let mut scrapes = Vec::new();
    let mut cpu = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..RUNS {
        let before = cpu_seconds_with_children(pid);
        let started = Instant::now();
        let (status, body) = match http_get(daemon.addr, "/metrics") {
            Ok(answer) => answer,
            // The comparison may outlast the daemon's 10 s write deadline
            // where everything is slow (a guest under TCG): say so, and
            // keep the figures of the way the target is about.
            Err(err) if !way.walks => {
                println!("  {}: a scrape failed, not measured: {err}", way.name);
                return None;
            }
            Err(err) => panic!("scrape: {err}"),
        };
        scrapes.push(started.elapsed().as_secs_f64() * 1e3);
        cpu.push((cpu_seconds_with_children(pid) - before) * 1e3);
        assert_eq!(status, 200);
        reads.push(metric_value(&body, "portmon_scrape_duration_seconds", &[]).unwrap_or(f64::NAN) * 1e3);
        assert_eq!(sockets_in(&body, names), SOCKETS as u64);
        assert_eq!(
            metric_value(&body, "portmon_inventory_walked", &[]),
            Some(f64::from(u8::from(way.walks))),
            "a walk failed during the bench: {}",
            way.name
        );
    }
    drop(daemon);
    Some(Costs {
        scrape_ms: percentile(&scrapes, 0.5),
        cpu_ms: percentile(&cpu, 0.5),
        read_ms: percentile(&reads, 0.5),
    })
}

/// Sums `portmon_sockets` over the namespaces `names`.
fn sockets_in(body: &str, names: &[&str]) -> u64 {
    let labels: std::collections::HashSet<String> = names.iter().map(|n| format!("netns=\"{n}\"")).collect();
    body.lines()
        .filter_map(|l| l.strip_prefix("portmon_sockets{")?.rsplit_once("} "))
        .filter(|(series, _)| series.split(',').any(|l| labels.contains(l)))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// Holders for `names`, `per_namespace` sockets in each: namespaces are
/// dealt out to the holders, or, with fewer namespaces than holders, each
/// holder takes a share of every one (on its own ports).
fn spawn(names: &[&str], per_namespace: usize) -> Holders {
    let exe = std::env::current_exe().expect("own path");
    let shares = if names.len() >= HOLDERS { 1 } else { HOLDERS };
    let per_share = per_namespace / shares;
    let listeners = (per_share / SOCKETS_PER_LISTENER).max(1);
    let pairs = (per_share - listeners) / 2;
    assert_eq!(listeners + 2 * pairs, per_share, "sockets split evenly");
    let mut holders = Holders(Vec::new());
    for h in 0..HOLDERS {
        let mine: Vec<&str> = if shares == 1 {
            names.iter().skip(h).step_by(HOLDERS).copied().collect()
        } else {
            names.to_vec()
        };
        let first_port = FIRST_PORT as usize + if shares == 1 { 0 } else { h * listeners };
        let child = std::process::Command::new(&exe)
            .arg("--hold-in")
            .args([first_port, listeners, pairs].map(|n| n.to_string()))
            .args(&mine)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a holder");
        holders.0.push(child);
    }
    holders.wait_ready();
    holders
}

/// The child's side: in each namespace of `names`, listens on `listeners`
/// ports from `first_port` and makes `pairs` connections to them; says
/// `ready` and holds everything until stdin closes.
pub fn hold_in(first_port: u16, listeners: usize, pairs: usize, names: &[String]) {
    raise_fd_limit();
    let held: Vec<(Vec<TcpListener>, Vec<TcpStream>)> = names
        .iter()
        .map(|name| {
            let path = Path::new("/run/netns").join(name);
            portmon::kernel::netns::run_in(&path, || {
                let listening: Vec<TcpListener> = (0..listeners)
                    .map(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, first_port + i as u16)).expect("listen"))
                    .collect();
                let mut ends = Vec::with_capacity(2 * pairs);
                for i in 0..pairs {
                    let listener = &listening[i % listeners];
                    ends.push(TcpStream::connect(listener.local_addr().unwrap()).expect("connect"));
                    ends.push(listener.accept().expect("accept").0);
                }
                (listening, ends)
            })
            .expect("enter a namespace")
        })
        .collect();
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
}

/// The daemon's CPU and its children's (the namespace helper), in seconds.
fn cpu_seconds_with_children(pid: u32) -> f64 {
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    cpu_seconds(pid)
        + children
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .map(cpu_seconds)
            .sum::<f64>()
}
