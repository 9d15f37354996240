//! Ports the kernel chose are counted per pool, through the real daemon:
//! exactly, with no per-port series, so that the series go to the ports
//! programs chose; and what the programs cost, from the kernel's account.

use std::net::{TcpListener, UdpSocket};

use portmon_tests::{metric_value, serial, write_sysctl, Daemon, NamedNetns};

const NO_FOLDING: &[&str] = &["--port-series-limit", "10000000"];

/// Per-port series of a family that carry `netns`.
fn port_series<'a>(body: &'a str, family: &str, netns: &str) -> Vec<&'a str> {
    let netns = format!("netns=\"{netns}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&netns))
        .collect()
}

/// sendto() from a fresh, unbound UDP socket to a port nobody listens on
/// (the datagram is sent all the same), then close.
fn udp_sendto_unbound(port: u16) {
    // SAFETY: plain socket calls on a buffer and an address we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let sent = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            0,
            (&raw const sin).cast(),
            std::mem::size_of_val(&sin) as u32,
        );
        assert_eq!(sent, 1, "sendto: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

#[test]
fn ten_thousand_bind_zero_and_udp_autobinds_count_exactly_with_no_port_series() {
    let _serial = serial();
    let ns = NamedNetns::create("pools");
    let daemon = Daemon::start("127.0.0.1:17471".parse().unwrap(), NO_FOLDING);
    let n = 10_000;
    ns.enter(|| {
        for _ in 0..n {
            drop(UdpSocket::bind("127.0.0.1:0").expect("bind 0"));
        }
        for _ in 0..n {
            udp_sendto_unbound(9);
        }
    });
    let body = daemon.scrape();
    let netns = ns.name.as_str();
    let assigned = |op: &str| {
        metric_value(
            &body,
            "portmon_ephemeral_ports_assigned_total",
            &[("netns", netns), ("proto", "udp"), ("family", "ipv4"), ("op", op)],
        )
    };
    assert_eq!(assigned("bind"), Some(f64::from(n)), "bind(0)");
    assert_eq!(
        assigned("autobind"),
        Some(f64::from(n)),
        "sendto() from unbound sockets"
    );
    assert_eq!(assigned("connect"), None, "no TCP connect was made");
    for family in ["portmon_binds_total", "portmon_connects_total"] {
        let series = port_series(&body, family, netns);
        assert!(series.is_empty(), "{family} has per-port series: {series:?}");
    }
}

#[test]
fn a_listener_started_after_100000_bind_zero_gets_its_own_series() {
    let _serial = serial();
    let ns = NamedNetns::create("pools-listener");
    // Room for the ports a host holds, far less than the pool's 28,232.
    let daemon = Daemon::start(
        "127.0.0.1:17472".parse().unwrap(),
        &["--port-series-limit", "2000"],
    );
    let port = 15_230;
    let netns = ns.name.as_str();
    ns.enter(|| {
        for i in 0..100_000 {
            drop(UdpSocket::bind("127.0.0.1:0").expect("bind 0"));
            if i % 25_000 == 0 {
                // Scrapes in between, as Prometheus' would be.
                let _ = daemon.scrape();
            }
        }
    });
    let _ = daemon.scrape();
    let listener = ns.enter(|| TcpListener::bind(("127.0.0.1", port)).expect("listen"));
    let body = daemon.scrape();
    let own = [("netns", netns), ("port", &*port.to_string())];
    assert_eq!(
        metric_value(&body, "portmon_binds_total", &own),
        Some(1.0),
        "the listener's bind has its own series: {:?}",
        port_series(&body, "portmon_binds_total", netns)
    );
    assert_eq!(
        metric_value(
            &body,
            "portmon_ephemeral_ports_assigned_total",
            &[("netns", netns), ("proto", "udp"), ("op", "bind")]
        ),
        Some(100_000.0)
    );
    drop(listener);
}

/// Puts `kernel.bpf_stats_enabled` back as it was, even when a test fails.
struct StatsSysctl(String);

impl StatsSysctl {
    fn set(value: &str) -> Self {
        let before =
            std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").expect("bpf_stats_enabled");
        write_sysctl("kernel/bpf_stats_enabled", value);
        Self(before.trim().to_owned())
    }
}

impl Drop for StatsSysctl {
    fn drop(&mut self) {
        write_sysctl("kernel/bpf_stats_enabled", &self.0);
    }
}

#[test]
fn program_runs_follow_the_kernels_account_and_are_absent_while_it_keeps_none() {
    let _serial = serial();
    let ns = NamedNetns::create("pools-stats");
    let daemon = Daemon::start("127.0.0.1:17473".parse().unwrap(), &[]);
    let runs = |body: &str| {
        metric_value(
            body,
            "portmon_bpf_program_runs_total",
            &[("program", "post_bind4")],
        )
    };
    let seconds = |body: &str| {
        metric_value(
            body,
            "portmon_bpf_program_run_seconds_total",
            &[("program", "post_bind4")],
        )
    };
    let binds = 100;
    {
        let _on = StatsSysctl::set("1");
        let before = daemon.scrape();
        let (runs_before, seconds_before) = (
            runs(&before).expect("runs while on"),
            seconds(&before).expect("seconds while on"),
        );
        ns.enter(|| {
            for _ in 0..binds {
                drop(UdpSocket::bind("127.0.0.1:0").expect("bind 0"));
            }
        });
        let after = daemon.scrape();
        let (runs_after, seconds_after) = (runs(&after).unwrap(), seconds(&after).unwrap());
        // Other processes on the host bind too: at least ours.
        assert!(
            runs_after - runs_before >= f64::from(binds),
            "{runs_before} → {runs_after}"
        );
        assert!(
            seconds_after > seconds_before,
            "{seconds_before} → {seconds_after}"
        );
    }
    let _off = StatsSysctl::set("0");
    let off = daemon.scrape();
    assert!(
        !off.contains("portmon_bpf_program_run"),
        "series while the kernel keeps no account: {:?}",
        off.lines()
            .filter(|l| l.contains("portmon_bpf_program_run"))
            .collect::<Vec<_>>()
    );
}
