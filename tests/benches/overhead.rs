//! What portmon costs the host: socket operations per second without and
//! with the programs attached (medians of interleaved runs), tight loops
//! and a real web server under load, and the kernel's own account of the
//! time spent in each program per operation. TCP workloads are measured
//! with `connect-search` on as well, to decide whether it can be on by
//! default. Needs root, and nginx and wrk (`cargo xtask setup`). Run with
//! `cargo xtask bench`.

#[path = "overhead/nginx.rs"]
mod nginx;

use std::{
    io,
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use portmon::kernel::bpf::LoadOptions;
use portmon_tests::{in_fresh_netns, reset_on_close, write_sysctl, Monitor};

/// Rounds of the kernel's own account of BPF time, and operations in each.
const ROUNDS: usize = 15;
const BPF_TIME_OPS: usize = 10_000;
/// Short runs, switching setup between each: on a shared VM a loop's rate
/// drifts over seconds with the neighbours' load (docs/performance.md says
/// by how much), which only setups measured within a fraction of a second
/// of each other cancel. Loading the programs takes longer than a slice,
/// so they are loaded once and their links switched instead.
const SLICES: usize = 75;
/// Ephemeral range of the bench namespaces: small enough for a warm-up pass
/// to meet every port once, as a host that has run portmon a while has.
const PORT_RANGE: (u16, u16) = (40_000, 44_999);
const WARM_UP_OPS: usize = 15_000;
/// Pause before each measured slice, for the work a switch of setup
/// leaves behind (programs and sockets freed after an RCU grace period).
const SETTLE: Duration = Duration::from_millis(10);

/// Seconds of each nginx slice: wrk counts in whole seconds.
const NGINX_SLICE_SECONDS: u32 = 1;

/// Each loop closes what it opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    TcpConnectAccept,
    BindPortZero,
    UdpConnect,
    /// nginx under wrk, a new connection per request.
    Nginx,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::TcpConnectAccept,
        Workload::BindPortZero,
        Workload::UdpConnect,
        Workload::Nginx,
    ];

    /// Rounds: a second per nginx slice makes its rounds long, and fewer
    /// pin its median as well, its rate being steadier over a second.
    /// The setups measured: `connect-search` changes TCP connects alone.
    fn setups(self) -> &'static [Setup] {
        match self {
            Workload::TcpConnectAccept | Workload::Nginx => &Setup::ALL,
            Workload::BindPortZero | Workload::UdpConnect => &Setup::ALL[..3],
        }
    }

    fn rounds(self) -> usize {
        match self {
            Workload::Nginx => 25,
            _ => SLICES,
        }
    }

    /// Operations per measured slice, sized for slices of a little over a
    /// tenth of a second: long enough to average over the stalls of a few
    /// ms that a VM's neighbours cause, short enough to share its mood with
    /// the next.
    fn ops(self) -> usize {
        match self {
            Workload::TcpConnectAccept => 5_000,
            Workload::BindPortZero | Workload::UdpConnect => 16_000,
            // Not operations: the slice is NGINX_SLICE_SECONDS of wrk.
            Workload::Nginx => 0,
        }
    }

    /// The workloads named in `PORTMON_BENCH_WORKLOADS` (`tcp`, `bind`,
    /// `udp`, `nginx`, comma-separated), or all of them: one workload's figures in a
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
            eprintln!("error: PORTMON_BENCH_WORKLOADS={names:?} names none of tcp, bind, udp, nginx");
            std::process::exit(2);
        }
        chosen
    }

    fn short_name(self) -> &'static str {
        match self {
            Workload::TcpConnectAccept => "tcp",
            Workload::BindPortZero => "bind",
            Workload::UdpConnect => "udp",
            Workload::Nginx => "nginx",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::TcpConnectAccept => "tcp connect+accept+close",
            Workload::BindPortZero => "bind(0)+close",
            Workload::UdpConnect => "udp connect+close",
            Workload::Nginx => "nginx+wrk, conn. close",
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
            Workload::Nginx => unreachable!("nginx runs under wrk, not in a loop"),
        }
        .expect("workload");
        ops as f64 / started.elapsed().as_secs_f64()
    }
}

/// Runs `work` in a fresh namespace with the bench's port range, as the
/// user `PORTMON_BENCH_UID` names if it names one.
fn in_bench_netns<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    in_fresh_netns(|_| {
        write_sysctl(
            "net/ipv4/ip_local_port_range",
            &format!("{} {}", PORT_RANGE.0, PORT_RANGE.1),
        );
        if let Some(uid) = bench_uid() {
            act_for(uid);
        }
        work()
    })
}

/// The uid of `PORTMON_BENCH_UID`: the workloads run as that user, whose
/// sockets the kernel programs charge to its quota, where root's are not.
fn bench_uid() -> Option<u32> {
    let value = std::env::var("PORTMON_BENCH_UID").ok()?;
    match value.parse() {
        Ok(uid) if uid != 0 => Some(uid),
        _ => {
            eprintln!("error: PORTMON_BENCH_UID={value:?} is not a uid other than 0");
            std::process::exit(2);
        }
    }
}

/// Makes `uid` the calling thread's real uid, and its alone (the raw
/// system call, not glibc's, which changes every thread's): the kernel
/// programs see that user, while the effective uid 0 keeps the
/// capabilities the bench needs to switch programs.
fn act_for(uid: u32) {
    // SAFETY: setresuid with -1 leaves the effective and saved ids.
    let done = unsafe { libc::syscall(libc::SYS_setresuid, uid, -1i32, -1i32) };
    assert_eq!(done, 0, "setresuid: {}", io::Error::last_os_error());
}

/// What a slice is measured under.
#[derive(Clone, Copy)]
enum Setup {
    Without,
    /// Every program returning at once: the floor, what the hooks cost with
    /// nothing done in them.
    HooksOnly,
    Portmon,
    /// portmon with `connect-search` on.
    ConnectSearch,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Without,
        Setup::HooksOnly,
        Setup::Portmon,
        Setup::ConnectSearch,
    ];
}

/// Operations per second of `workload` under each of its setups (in
/// `Setup::ALL` order, none for a setup it is not measured under), one
/// slice each per round, in an order that turns with the round
/// so that none always runs first or last. Portmon's maps persist over the
/// rounds, and a first pass under each setup meets every port of the range
/// once: the steady state of a host that has run portmon a while.
fn rates(workload: Workload) -> [Vec<f64>; 4] {
    in_bench_netns(|| {
        let mut floor = Monitor::attach_with(LoadOptions {
            hooks_only: true,
            ..LoadOptions::default()
        });
        floor.suspend();
        let mut portmon = Monitor::attach();
        portmon.suspend();
        let mut searching = Monitor::attach_with(LoadOptions {
            connect_search: true,
            ..LoadOptions::default()
        });
        searching.suspend();
        let nginx = (workload == Workload::Nginx).then(nginx::Nginx::start);
        let mut run = |setup: Setup, ops: usize| {
            let mut monitor = match setup {
                Setup::Without => None,
                Setup::HooksOnly => Some(&mut floor),
                Setup::Portmon => Some(&mut portmon),
                Setup::ConnectSearch => Some(&mut searching),
            };
            if let Some(m) = monitor.as_deref_mut() {
                m.resume();
            }
            std::thread::sleep(SETTLE);
            let rate = match &nginx {
                Some(nginx) => nginx.load(NGINX_SLICE_SECONDS),
                None => workload.run_here(ops),
            };
            if let Some(m) = monitor {
                m.suspend();
            }
            rate
        };
        let setups = workload.setups();
        for &setup in setups {
            run(setup, WARM_UP_OPS);
        }
        let mut rates: [Vec<f64>; 4] = Default::default();
        for r in 0..workload.rounds() {
            for k in 0..setups.len() {
                let at = (k + r) % setups.len();
                rates[at].push(run(setups[at], workload.ops()));
            }
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
        reset_on_close(client.as_fd());
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

/// The 95% confidence interval of the median, from order statistics (no
/// assumption on how the values spread): how well the rounds pin it.
fn median_interval(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let half_width = 0.98 * n.sqrt();
    let low = ((n / 2.0 - half_width).floor() as usize).saturating_sub(1);
    let high = ((n / 2.0 + half_width + 1.0).ceil() as usize).saturating_sub(1);
    (values[low], values[high.min(values.len() - 1)])
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Per-program (run count, run time) of portmon's loaded programs.
fn program_stats() -> Vec<(String, u64, Duration)> {
    let names: Vec<&str> = portmon::kernel::bpf::PROGRAMS.iter().map(|(n, _)| *n).collect();
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
fn bpf_time(workload: Workload, options: LoadOptions) -> (f64, Vec<String>) {
    in_bench_netns(|| {
        let mut monitor = Monitor::attach_with(options);
        workload.run_here(WARM_UP_OPS);
        let before = program_stats();
        workload.run_here(BPF_TIME_OPS);
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
                    runs as f64 / BPF_TIME_OPS as f64
                ));
            }
        }
        (total.as_nanos() as f64 / BPF_TIME_OPS as f64, detail)
    })
}

fn main() {
    println!(
        "portmon overhead: {SLICES} rounds per workload of one slice of {} TCP / {} bind / {} UDP operations under \
         each setup, in the same namespace, the order turning each round (ephemeral range {}-{}); portmon's programs \
         stay loaded, their maps warm, and are attached only for their slices. Rates are medians, ratios the \
         medians of each round's own ratios (slices side by side share the machine's mood), each with the 95% \
         confidence interval of that median. nginx: {} rounds of {NGINX_SLICE_SECONDS} s of wrk (one thread, {} \
         connections, `Connection: close`) against nginx (one worker) on loopback, requests/s{}",
        Workload::TcpConnectAccept.ops(),
        Workload::BindPortZero.ops(),
        Workload::UdpConnect.ops(),
        PORT_RANGE.0,
        PORT_RANGE.1,
        Workload::Nginx.rounds(),
        nginx::CONNECTIONS,
        bench_uid().map_or(String::new(), |uid| format!(
            "; the workloads run as uid {uid} (PORTMON_BENCH_UID)"
        )),
    );
    println!(
        "\n{:<26} {:>13} {:>11} {:>7} {:>15} {:>11} {:>7} {:>7} {:>15} {:>12} {:>7} {:>15}",
        "workload",
        "without ops/s",
        "hooks only",
        "ratio",
        "95% interval",
        "with ops/s",
        "ratio",
        "change",
        "95% interval",
        "+search op/s",
        "ratio",
        "95% interval"
    );
    let workloads = Workload::chosen();
    for &workload in &workloads {
        let [without, floor, with, searching] = rates(workload);
        // Each slice against the "without" slice of its round.
        let ratios = |setup: &[f64]| -> (f64, String) {
            let ratios: Vec<f64> = setup.iter().zip(&without).map(|(s, w)| s / w).collect();
            let (low, high) = median_interval(ratios.clone());
            (median(ratios), format!("[{low:.3}, {high:.3}]"))
        };
        let (floor_ratio, floor_interval) = ratios(&floor);
        let (ratio, interval) = ratios(&with);
        let search = if searching.is_empty() {
            format!("{:>12} {:>7} {:>15}", "-", "-", "-")
        } else {
            let (search_ratio, search_interval) = ratios(&searching);
            format!(
                "{:>12.0} {:>7.3} {:>15}",
                median(searching),
                search_ratio,
                search_interval
            )
        };
        println!(
            "{:<26} {:>13.0} {:>11.0} {:>7.3} {:>15} {:>11.0} {:>7.3} {:>+6.1}% {:>15} {search}",
            workload.name(),
            median(without.clone()),
            median(floor),
            floor_ratio,
            floor_interval,
            median(with),
            ratio,
            (ratio - 1.0) * 100.0,
            interval
        );
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
    // nginx's requests are TCP connections, which the TCP loop accounts.
    for &workload in workloads.iter().filter(|w| **w != Workload::Nginx) {
        let (mut floors, mut totals, mut details) = (Vec::new(), Vec::new(), Vec::new());
        let mut searching = Vec::new();
        let timed = workload.setups().len() == Setup::ALL.len();
        for _ in 0..ROUNDS {
            let hooks_only = LoadOptions {
                hooks_only: true,
                ..LoadOptions::default()
            };
            floors.push(bpf_time(workload, hooks_only).0);
            let (total, detail) = bpf_time(workload, LoadOptions::default());
            totals.push(total);
            details.push((total, detail));
            if timed {
                let with_search = LoadOptions {
                    connect_search: true,
                    ..LoadOptions::default()
                };
                searching.push(bpf_time(workload, with_search));
            }
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
        if !searching.is_empty() {
            let search_total = median(searching.iter().map(|(t, _)| *t).collect());
            searching.sort_by(|a, b| (a.0 - search_total).abs().total_cmp(&(b.0 - search_total).abs()));
            println!(
                "  {:<26} {:>7.0} ns/op with connect-search, its work {:>5.0}   [{}]",
                "",
                search_total,
                search_total - total,
                searching[0].1.join(", ")
            );
        }
    }
    let _ = std::fs::write(stats_path, previous.trim());
}
