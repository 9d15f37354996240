//! portmon under a service manager: the unit's capabilities and nothing
//! else, readiness over a real `NOTIFY_SOCKET` only once everything is
//! attached and listening, capabilities given up after attach, and SIGHUP
//! reloads that keep the counters (and keep the old configuration when the
//! new one is bad).

use std::{net::TcpListener, time::Duration};

use portmon_tests::{
    default_programs, http_get, in_fresh_netns, loaded_portmon_programs, portmon_bin, serial,
    settled_portmon_programs,
    supervised::{setpriv_args, unit_file, unit_values, Supervised},
    wait_until,
};

const PROGRAMS: usize = portmon::kernel::bpf::PROGRAMS.len();

/// The capabilities of the namespace helper, which the daemon hands over.
pub(crate) const HELPER_CAPABILITIES: [&str; 2] = ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"];

/// The capabilities the unit grants.
pub(crate) fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(unit_file()).expect("read the unit file");
    let caps = unit_values(&unit, "AmbientCapabilities");
    assert_eq!(
        caps,
        unit_values(&unit, "CapabilityBoundingSet"),
        "ambient and bounding sets differ"
    );
    for cap in HELPER_CAPABILITIES {
        assert!(caps.iter().any(|c| c == cap), "{cap} not in {caps:?}");
    }
    caps
}

/// `portmon run` as user nobody with `caps`, as the unit would start it.
pub(crate) fn run_as_nobody(tag: &str, caps: &[String], listen: &str, extra: &[&str]) -> Supervised {
    let mut args = setpriv_args("65534", caps);
    args.push(portmon_bin().display().to_string());
    args.extend(["run", "--listen", listen].map(str::to_owned));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Supervised::spawn(tag, "setpriv".as_ref(), &args, &[("PORTMON_LOG", "info")])
}

fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn unit_capabilities_suffice_ready_comes_after_attach_and_they_are_given_up() {
    let _serial = serial();
    let before = settled_portmon_programs();
    let caps = unit_capabilities();
    let addr = "127.0.0.1:17480".parse().unwrap();
    let mut daemon = run_as_nobody("least", &caps, "127.0.0.1:17480", &[]);
    let ready = daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log_text()));
    // At the moment READY=1 arrives, everything must already be there.
    assert_eq!(loaded_portmon_programs(), before + PROGRAMS, "programs at READY");
    assert!(
        matches!(http_get(addr, "/healthz"), Ok((200, _))),
        "not listening at READY"
    );
    assert!(
        ready.contains(&format!("STATUS={} programs attached", default_programs().len())),
        "{ready}"
    );
    let attachable = default_programs();
    for (program, _) in portmon::kernel::bpf::PROGRAMS {
        assert_eq!(
            metric(
                addr,
                &format!("portmon_program_attached{{program=\"{program}\"}}")
            ),
            // An optional hook this kernel lacks has no series, nor an
            // opt-in program not asked for.
            attachable.contains(program).then_some(1.0),
            "{program}"
        );
    }

    for (effective, permitted) in daemon.thread_capabilities() {
        assert_eq!(effective, "0000000000000000", "a thread kept capabilities");
        assert_eq!(
            permitted, "0000000000000000",
            "a thread kept permitted capabilities"
        );
    }
    let (_, ports) = http_get(addr, "/api/v1/ports?listening=1&port=17480").expect("ports");
    assert!(ports.contains("\"port\":17480"), "{ports}");
    let log = daemon.log_text();
    assert!(log.contains("namespace helper started"), "{log}");
    assert!(!log.contains("covers its own namespace only"), "{log}");

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_for("STOPPING=1", Duration::from_secs(10)).is_some());
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}:\n{}", daemon.log_text());
    assert!(!log.contains("panicked"), "{log}");
}

/// Each capability the programs need is needed even with the helper's
/// granted: the daemon hands CAP_SYS_ADMIN (which would stand in for
/// CAP_BPF and CAP_PERFMON) to the helper before it loads anything.
#[test]
fn each_unit_capability_is_needed() {
    let _serial = serial();
    let caps = unit_capabilities();
    for missing in caps.iter().filter(|c| !HELPER_CAPABILITIES.contains(&c.as_str())) {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut daemon = run_as_nobody("fewer", &fewer, "127.0.0.1:17481", &[]);
        let status = daemon
            .wait_exit(Duration::from_secs(30))
            .expect("portmon must exit without the capability");
        let log = daemon.log_text();
        assert_eq!(status.code(), Some(1), "without {missing}: {status}\n{log}");
        let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("portmon: ")).collect();
        assert_eq!(lines.len(), 1, "one line without {missing}:\n{log}");
        assert!(lines[0].contains(missing.as_str()), "{missing} not named: {log}");
    }
}

/// Binds port `port` `times` times in a fresh namespace; returns its cookie.
fn bind_in_fresh_netns(port: u16, times: usize) -> u64 {
    in_fresh_netns(|ns| {
        for _ in 0..times {
            drop(TcpListener::bind(("127.0.0.1", port)).expect("bind"));
        }
        ns.cookie
    })
}

fn binds_of(addr: std::net::SocketAddr, netns: u64, port: u16) -> u64 {
    let (_, body) = http_get(addr, "/api/v1/counters").expect("counters");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body).expect("counters JSON");
    entries
        .iter()
        .filter(|e| e["netns"].as_u64() == Some(netns) && e["port"].as_u64() == Some(u64::from(port)))
        .filter_map(|e| e["binds"].as_u64())
        .sum()
}

#[test]
fn sighup_reloads_without_losing_counters_and_a_bad_file_changes_nothing() {
    let _serial = serial();
    let dir = tempfile_dir("reload");
    let config = dir.join("portmon.toml");
    std::fs::write(&config, "port-series-limit = 5\n").expect("write config");
    let addr = "127.0.0.1:17482".parse().unwrap();
    let config_arg = config.display().to_string();
    let mut args: Vec<String> = ["run", "--listen", "127.0.0.1:17482", "--config", &config_arg]
        .map(str::to_owned)
        .to_vec();
    args.insert(0, "--log=info".into());
    let started_at = unix_now();
    let mut daemon = Supervised::spawn("reload", &portmon_bin(), &args, &[]);
    daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .expect("READY=1");
    assert_eq!(metric(addr, "portmon_port_series_limit"), Some(5.0));
    let (ok, at_start) = last_reload(addr);
    assert!(ok, "the load at start is a success");
    assert!(
        at_start >= started_at,
        "success at {at_start}, started at {started_at}"
    );

    let netns = bind_in_fresh_netns(4242, 3);
    assert!(
        wait_until(Duration::from_secs(2), || binds_of(addr, netns, 4242) == 3),
        "binds before reload: {}",
        binds_of(addr, netns, 4242)
    );

    std::fs::write(&config, "port-series-limit = 7\nnetns-label = \"always\"\n").expect("rewrite config");
    let signalled_at = unix_now();
    daemon.signal(libc::SIGHUP);
    assert!(daemon.wait_for("RELOADING=1", Duration::from_secs(5)).is_some());
    assert!(daemon.wait_for("READY=1", Duration::from_secs(5)).is_some());
    assert_eq!(metric(addr, "portmon_port_series_limit"), Some(7.0));
    let (ok, after_good) = last_reload(addr);
    assert!(ok, "a good reload reads as successful");
    assert!(
        after_good >= signalled_at && after_good > at_start,
        "success at {after_good}: SIGHUP at {signalled_at}, start at {at_start}"
    );
    assert_eq!(binds_of(addr, netns, 4242), 3, "counters after reload");
    let (_, body) = http_get(addr, "/metrics").expect("metrics");
    assert!(
        body.lines()
            .any(|l| l.starts_with("portmon_sockets{") && l.contains("netns=")),
        "netns-label = always not applied"
    );

    std::fs::write(&config, "port-series-limit = 9\nport-series-limt = 3\n").expect("bad config");
    daemon.signal(libc::SIGHUP);
    assert!(daemon.wait_for("READY=1", Duration::from_secs(5)).is_some());
    assert_eq!(
        metric(addr, "portmon_port_series_limit"),
        Some(7.0),
        "bad file applied"
    );
    assert_eq!(
        last_reload(addr),
        (false, after_good),
        "a refused reload reads 0 and keeps the time of the last success"
    );
    let log = daemon.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("reload failed")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    for word in [
        config_arg.as_str(),
        "line 2",
        "port-series-limt",
        "running configuration stays",
    ] {
        assert!(errors[0].contains(word), "{word} missing from: {}", errors[0]);
    }

    // Still counting after both reloads.
    let later = bind_in_fresh_netns(4243, 2);
    assert!(
        wait_until(Duration::from_secs(2), || binds_of(addr, later, 4243) == 2),
        "binds after reloads: {}",
        binds_of(addr, later, 4243)
    );
    assert_eq!(binds_of(addr, netns, 4242), 3);
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `portmon_config_last_reload_successful` (as a bool) and
/// `portmon_config_last_reload_success_timestamp_seconds`.
fn last_reload(addr: std::net::SocketAddr) -> (bool, f64) {
    let ok = metric(addr, "portmon_config_last_reload_successful").expect("reload gauge");
    let at = metric(addr, "portmon_config_last_reload_success_timestamp_seconds").expect("reload time");
    (ok == 1.0, at)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

#[test]
fn a_bad_config_at_start_names_file_line_and_reason() {
    let _serial = serial();
    let dir = tempfile_dir("badstart");
    let config = dir.join("portmon.toml");
    std::fs::write(&config, "# comment\nnetns-label = \"sometimes\"\n").expect("write config");
    let output = std::process::Command::new(portmon_bin())
        .args(["run", "--listen", "127.0.0.1:17483", "--config"])
        .arg(&config)
        .output()
        .expect("run portmon");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for word in [
        config.display().to_string().as_str(),
        "line 2",
        "netns-label",
        "sometimes",
    ] {
        assert!(lines[0].contains(word), "{word} missing: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portmon-service-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Every syscall in a systemd syscall group, nested groups expanded
/// (`systemd-analyze syscall-filter`, this host's systemd).
fn syscall_group(group: &str, out: &mut std::collections::BTreeSet<String>) {
    let listing = std::process::Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("systemd-analyze syscall-filter");
    assert!(listing.status.success(), "unknown syscall group {group}");
    for line in String::from_utf8_lossy(&listing.stdout).lines().skip(1) {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            syscall_group(item, out);
        } else {
            out.insert(item.to_owned());
        }
    }
}

/// What the unit's `SystemCallFilter=` lines allow: an allow list, then
/// `~` lines that take from it, then plain lines that add back.
fn unit_syscalls() -> std::collections::BTreeSet<String> {
    let unit = std::fs::read_to_string(unit_file()).expect("read the unit file");
    let mut allowed = std::collections::BTreeSet::new();
    for line in unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
    {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut set = std::collections::BTreeSet::new();
        for item in items.split_whitespace() {
            if item.starts_with('@') {
                syscall_group(item, &mut set);
            } else {
                set.insert(item.to_owned());
            }
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    assert!(allowed.contains("bpf"), "the filter must allow bpf()");
    allowed
}

/// Whether an strace line is the successful execve of the portmon binary
/// (not of setpriv, whose arguments name it too).
fn execs_portmon(line: &str) -> bool {
    let program = line
        .split_once("execve(\"")
        .and_then(|(_, rest)| rest.split('"').next());
    program.is_some_and(|p| p.ends_with("/portmon")) && line.ends_with("= 0")
}

#[test]
fn the_unit_s_syscall_filter_allows_every_call_the_daemon_makes() {
    let _serial = serial();
    let allowed = unit_syscalls();
    let dir = std::env::temp_dir().join(format!("portmon-syscalls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let trace = dir.join("strace.log");
    let listen = "127.0.0.1:17486";
    let mut args: Vec<String> = vec![
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        trace.display().to_string(),
        "--".into(),
    ];
    args.push("setpriv".into());
    args.extend(setpriv_args("65534", &unit_capabilities()));
    args.push(portmon_bin().display().to_string());
    args.extend(["run", "--listen", listen].map(str::to_owned));
    let mut daemon = Supervised::spawn("syscalls", "strace".as_ref(), &args, &[("PORTMON_LOG", "info")]);
    daemon
        .wait_for("READY=1", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no READY=1 under strace:\n{}", daemon.log_text()));
    let addr = listen.parse().unwrap();
    // Every path a running daemon takes: scrapes, the API, a reload, a stop.
    for path in [
        "/metrics",
        "/api/v1/ports",
        "/api/v1/ephemeral",
        "/api/v1/failures",
        "/api/v1/counters",
    ] {
        assert!(matches!(http_get(addr, path), Ok((200, _))), "{path}");
    }
    let text = std::fs::read_to_string(&trace).expect("strace log");
    let pid: i32 = text
        .lines()
        .find(|l| execs_portmon(l))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the daemon's execve in the trace");
    // SAFETY: kill(2) on the daemon, a descendant of this test.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        daemon.wait_for("READY=1", Duration::from_secs(30)).is_some(),
        "no READY=1 after SIGHUP"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}:\n{}", daemon.log_text());

    // Only what the daemon calls after its execve: setpriv's own work is
    // what systemd does before applying the filter.
    let text = std::fs::read_to_string(&trace).expect("strace log");
    let lines: Vec<&str> = text.lines().collect();
    let exec = lines.iter().position(|l| execs_portmon(l)).expect("execve line");
    let mut called = std::collections::BTreeSet::new();
    for line in &lines[exec + 1..] {
        let Some((_, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if call.starts_with("<...") || call.starts_with("+++") || call.starts_with("---") {
            continue;
        }
        if let Some(name) = call
            .split('(')
            .next()
            .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            if !name.is_empty() {
                called.insert(name.to_owned());
            }
        }
    }
    assert!(
        called.contains("bpf") && called.contains("recvfrom") || called.contains("bpf"),
        "{called:?}"
    );
    let denied: Vec<&String> = called.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter would refuse {denied:?} (called: {called:?})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
