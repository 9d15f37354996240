//! What portmon costs the host: socket operations per second without and
//! with the programs attached (medians of interleaved runs), and the
//! kernel's own account of the time spent in each program per operation.
//! Needs root. Run with `cargo xtask bench`.

use std::{
    io,
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use portmon::loader::LoadOptions;
use portmon_tests::{in_fresh_netns, write_sysctl, Monitor};

/// Rounds per workload: a VM's neighbours move a single run by several
/// percent, more than the effect measured.
const ROUNDS: usize = 15;
/// Ephemeral range of the bench namespaces: small enough for a warm-up pass
/// to meet every port once, as a host that has run portmon a while has.
const PORT_RANGE: (u16, u16) = (40_000, 44_999);
const WARM_UP_OPS: usize = 15_000;

/// Each loop closes what it opened.
#[derive(Clone, Copy)]
enum Workload {
    TcpConnectAccept,
    BindPortZero,
    UdpConnect,
}

impl Workload {
    const ALL: [Workload; 3] = [
        Workload::TcpConnectAccept,
        Workload::BindPortZero,
        Workload::UdpConnect,
    ];

    /// Operations per measured run: about a tenth of a second each, long
    /// enough that a scheduler hiccup on a busy VM is a small part of it.
    fn ops(self) -> usize {
        match self {
            Workload::TcpConnectAccept => 10_000,
            Workload::BindPortZero | Workload::UdpConnect => 40_000,
        }
    }

    /// The workloads named in `PORTMON_BENCH_WORKLOADS` (`tcp`, `bind`,
    /// `udp`, comma-separated), or all of them: one workload's figures in a
    /// fraction of the time, while trying a change.
    fn chosen() -> Vec<Workload> {
        let Ok(names) = std::env::var("PORTMON_BENCH_WORKLOADS") else {
            return Self::ALL.to_vec();
        };
        let chosen: Vec<Workload> = Self::ALL
            .into_iter()
            .filter(|w| names.split(',').any(|n| n.trim() == w.short_name()))
            .collect();
        if chosen.is_empty() {
            eprintln!("error: PORTMON_BENCH_WORKLOADS={names:?} names none of tcp, bind, udp");
            std::process::exit(2);
        }
        chosen
    }

    fn short_name(self) -> &'static str {
        match self {
            Workload::TcpConnectAccept => "tcp",
            Workload::BindPortZero => "bind",
            Workload::UdpConnect => "udp",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::TcpConnectAccept => "tcp connect+accept+close",
            Workload::BindPortZero => "bind(0)+close",
            Workload::UdpConnect => "udp connect+close",
        }
    }

    /// Runs `ops` operations in the calling thread's namespace; returns
    /// operations per second.
    fn run_here(self, ops: usize) -> f64 {
        let started = Instant::now();
        match self {
            Workload::TcpConnectAccept => tcp_loop(ops),
            Workload::BindPortZero => bind_loop(ops),
            Workload::UdpConnect => udp_loop(ops),
        }
        .expect("workload");
        ops as f64 / started.elapsed().as_secs_f64()
    }
}

/// Runs `work` in a fresh namespace with the bench's port range.
fn in_bench_netns<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    in_fresh_netns(|_| {
        write_sysctl(
            "net/ipv4/ip_local_port_range",
            &format!("{} {}", PORT_RANGE.0, PORT_RANGE.1),
        );
        work()
    })
}

/// What a run is measured under.
#[derive(Clone, Copy)]
enum Setup {
    Without,
    /// Every program returning at once: the floor, what the hooks cost with
    /// nothing done in them.
    HooksOnly,
    Portmon,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Without, Setup::HooksOnly, Setup::Portmon];
}

/// One run of `workload` under `setup`, in the calling thread's namespace.
/// `warm`: a first pass meets every port of the range once, so that under
/// portmon the measured pass only updates counters (a host's steady state);
/// the other setups make the same pass, so that every measured run follows
/// the same work (sockets closed just before are still being freed).
/// Otherwise every port is new to portmon's maps.
fn measure(workload: Workload, setup: Setup, warm: bool) -> f64 {
    let attached = match setup {
        Setup::Without => None,
        Setup::HooksOnly => Some(Monitor::attach_with(LoadOptions {
            hooks_only: true,
            ..LoadOptions::default()
        })),
        Setup::Portmon => Some(Monitor::attach()),
    };
    if warm {
        workload.run_here(WARM_UP_OPS);
    }
    let rate = workload.run_here(workload.ops());
    if let Some(mut monitor) = attached {
        monitor.detach();
    }
    rate
}

/// One round in one namespace: the three setups, in an order that turns
/// with `round`, so that no setup always runs first or last (a drift over
/// the round would otherwise favour one).
fn round(workload: Workload, warm: bool, round: usize) -> [f64; 3] {
    in_bench_netns(|| {
        let mut rates = [0.0; 3];
        for k in 0..Setup::ALL.len() {
            let at = (k + round) % Setup::ALL.len();
            rates[at] = measure(workload, Setup::ALL[at], warm);
        }
        rates
    })
}

fn tcp_loop(ops: usize) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    for _ in 0..ops {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        // Close with RST so no TIME_WAIT piles up over thousands of loops.
        set_linger_zero(&client);
        drop(client);
        drop(server);
    }
    Ok(())
}

fn bind_loop(ops: usize) -> io::Result<()> {
    for _ in 0..ops {
        drop(UdpSocket::bind("127.0.0.1:0")?);
    }
    Ok(())
}

fn udp_loop(ops: usize) -> io::Result<()> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    for _ in 0..ops {
        // SAFETY: plain socket calls; the fd is closed right after.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = addr.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            if libc::connect(
                fd,
                (&raw const sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            libc::close(fd);
        }
    }
    Ok(())
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct for SO_LINGER.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// The first and third quartiles.
fn quartiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    (values[values.len() / 4], values[values.len() * 3 / 4])
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Per-program (run count, run time) of portmon's loaded programs.
fn program_stats() -> Vec<(String, u64, Duration)> {
    let names: Vec<&str> = portmon::loader::PROGRAMS.iter().map(|(n, _)| *n).collect();
    let mut stats: Vec<(String, u64, Duration)> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            // The kernel keeps 15 characters of a name.
            let name = p.name_as_str()?.to_owned();
            let full = names
                .iter()
                .find(|n| !name.is_empty() && n.starts_with(name.as_str()))?;
            Some(((*full).to_owned(), p.run_count(), p.run_time()))
        })
        .collect();
    stats.sort();
    stats
}

/// Total BPF ns per operation of one warm run, and the per-program split.
fn bpf_time(workload: Workload, hooks_only: bool) -> (f64, Vec<String>) {
    in_bench_netns(|| {
        let mut monitor = Monitor::attach_with(LoadOptions {
            hooks_only,
            ..LoadOptions::default()
        });
        workload.run_here(WARM_UP_OPS);
        let before = program_stats();
        workload.run_here(workload.ops());
        let after = program_stats();
        monitor.detach();
        let mut total = Duration::ZERO;
        let mut detail = Vec::new();
        for ((name, runs, time), (_, runs0, time0)) in after.iter().zip(&before) {
            let (runs, time) = (runs - runs0, time.saturating_sub(*time0));
            total += time;
            if runs > 0 {
                detail.push(format!(
                    "{name} {:.0} ns x {:.1}",
                    time.as_nanos() as f64 / runs as f64,
                    runs as f64 / workload.ops() as f64
                ));
            }
        }
        (total.as_nanos() as f64 / workload.ops() as f64, detail)
    })
}

fn main() {
    println!(
        "portmon overhead: {ROUNDS} rounds per workload of {} TCP / {} bind / {} UDP operations, without and with \
         portmon in the same namespace, the order turning each round (ephemeral range {}-{}); rates are medians, \
         ratios the medians of each round's own ratios (runs side by side share the machine's mood), with the \
         middle half of portmon's in brackets",
        Workload::TcpConnectAccept.ops(),
        Workload::BindPortZero.ops(),
        Workload::UdpConnect.ops(),
        PORT_RANGE.0,
        PORT_RANGE.1
    );
    round(Workload::TcpConnectAccept, false, 0); // warm the caches of the machine, not of portmon
    println!(
        "\n{:<26} {:<5} {:>14} {:>14} {:>8} {:>14} {:>8} {:>9} {:>15}",
        "workload",
        "maps",
        "without ops/s",
        "hooks only",
        "ratio",
        "with ops/s",
        "ratio",
        "change",
        "middle half"
    );
    let workloads = Workload::chosen();
    for &workload in &workloads {
        for warm in [true, false] {
            let (mut without, mut floor, mut with) = (Vec::new(), Vec::new(), Vec::new());
            let (mut floor_ratios, mut ratios) = (Vec::new(), Vec::new());
            for r in 0..ROUNDS {
                let [a, b, c] = round(workload, warm, r);
                without.push(a);
                floor.push(b);
                with.push(c);
                floor_ratios.push(b / a);
                ratios.push(c / a);
            }
            let ratio = median(ratios.clone());
            let (low, high) = quartiles(ratios);
            println!(
                "{:<26} {:<5} {:>14.0} {:>14.0} {:>8.3} {:>14.0} {:>8.3} {:>+8.1}% {:>15}",
                workload.name(),
                if warm { "warm" } else { "cold" },
                median(without),
                median(floor),
                median(floor_ratios),
                median(with),
                ratio,
                (ratio - 1.0) * 100.0,
                format!("[{low:.3}, {high:.3}]")
            );
        }
    }

    // The kernel's own account, with stats collection on only for this part
    // (it adds two clock reads per program run, which these figures include).
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    std::fs::write(stats_path, "1").expect("enable kernel.bpf_stats_enabled");
    println!(
        "\nBPF time per operation, warm maps (kernel.bpf_stats_enabled: run_time_ns / operations), medians of \
         {ROUNDS}; \"hooks only\" is every program returning at once: the clock reads and dispatch the figures \
         include whatever a program does"
    );
    for &workload in &workloads {
        let (mut floors, mut totals, mut details) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            floors.push(bpf_time(workload, true).0);
            let (total, detail) = bpf_time(workload, false);
            totals.push(total);
            details.push((total, detail));
        }
        let (floor, total) = (median(floors), median(totals));
        // The per-program split of the round closest to the median.
        details.sort_by(|a, b| (a.0 - total).abs().total_cmp(&(b.0 - total).abs()));
        println!(
            "  {:<26} {:>7.0} ns/op, hooks only {:>5.0}, portmon's work {:>5.0}   [{}]",
            workload.name(),
            total,
            floor,
            total - floor,
            details[0].1.join(", ")
        );
    }
    let _ = std::fs::write(stats_path, previous.trim());
}
