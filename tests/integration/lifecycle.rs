//! The daemon's life: it refuses to start without privileges, with one clear
//! line; SIGTERM detaches everything; after SIGKILL nothing stays attached.

use std::{os::unix::process::ExitStatusExt as _, process::Command, time::Duration};

use portmon_tests::{
    attachable_programs, loaded_portmon_programs, metric_value, portmon_bin, serial,
    settled_portmon_programs, wait_until, Daemon,
};

const PROGRAMS: usize = portmon::kernel::bpf::PROGRAMS.len();

#[test]
fn sigterm_detaches_every_program_and_exits_cleanly() {
    let status = stopped_with(libc::SIGTERM, "127.0.0.1:17455");
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[test]
fn after_sigkill_nothing_stays_attached() {
    let status = stopped_with(libc::SIGKILL, "127.0.0.1:17456");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

/// Starts a daemon, stops it with `signal` and checks that every program it
/// attached is gone within 5 s; returns how it exited.
fn stopped_with(signal: libc::c_int, listen: &str) -> std::process::ExitStatus {
    let _serial = serial();
    let before = settled_portmon_programs();
    let daemon = Daemon::start(listen.parse().unwrap(), &[]);
    assert_eq!(
        loaded_portmon_programs(),
        before + PROGRAMS,
        "programs while running"
    );
    let status = daemon.stop_with(signal);
    assert!(
        wait_until(Duration::from_secs(5), || loaded_portmon_programs() == before),
        "programs left after signal {signal}: {}",
        loaded_portmon_programs() - before
    );
    status
}

#[test]
fn without_privileges_it_exits_with_one_clear_line() {
    let _serial = serial();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(portmon_bin())
        .args(["run", "--listen", "127.0.0.1:17457"])
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        !output.status.success(),
        "portmon run must fail without privileges"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(
        lines[0].starts_with("portmon: missing capabilities CAP_BPF CAP_PERFMON CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_reports_every_hook() {
    let _serial = serial();
    let output = Command::new(portmon_bin())
        .arg("check")
        .output()
        .expect("run portmon check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "portmon check failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let attachable = attachable_programs();
    for (program, _) in portmon::kernel::bpf::PROGRAMS {
        // An optional hook this kernel lacks is "limited", not a failure.
        let want = if attachable.contains(program) {
            "ok"
        } else {
            "limited"
        };
        assert!(
            stdout.lines().any(|l| l.starts_with(want) && l.contains(program)),
            "{program} not {want}:\n{stdout}"
        );
    }

    // --json: the same checks, one object, for configuration management.
    let output = Command::new(portmon_bin())
        .args(["check", "--json"])
        .output()
        .expect("run portmon check --json");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(report["failed"], 0, "{report:#}");
    let checks = report["checks"].as_array().expect("checks");
    for (program, _) in portmon::kernel::bpf::PROGRAMS {
        let want = if attachable.contains(program) {
            "ok"
        } else {
            "limited"
        };
        assert!(
            checks
                .iter()
                .any(|c| c["name"] == *program && c["kind"] == "program" && c["status"] == want),
            "{program} not {want}: {report:#}"
        );
    }
    assert_eq!(
        checks.len(),
        stdout.lines().count() - 2,
        "as many checks as lines past kernel and cgroup:\n{stdout}{report:#}"
    );
}

/// Detaches the cgroup link of the newest loaded program named `name` the
/// way `bpftool link detach` does (`BPF_LINK_DETACH`), leaving its owner's
/// link open.
fn detach_from_outside(name: &str) {
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .max()
        .unwrap_or_else(|| panic!("no program {name} loaded"));
    let link = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .find(|l| l.program_id() == program)
        .unwrap_or_else(|| panic!("no link of program {name}"))
        .id();
    // BPF_LINK_GET_FD_BY_ID (30) takes the id first in the attr; BPF_LINK_DETACH
    // (34) the link's descriptor (include/uapi/linux/bpf.h).
    let mut attr = [0u32; 4];
    attr[0] = link;
    // SAFETY: bpf(2) with an attr of the size passed; the descriptor it
    // returns is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 30, attr.as_mut_ptr(), 16) };
    assert!(fd >= 0, "link {link}: {}", std::io::Error::last_os_error());
    attr = [fd as u32, 0, 0, 0];
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 34, attr.as_mut_ptr(), 16) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the descriptor bpf(2) returned above.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "detach link {link}: {err}");
}

#[test]
fn a_link_detached_from_outside_reads_as_not_attached() {
    let _serial = serial();
    let daemon = Daemon::start("127.0.0.1:17474".parse().unwrap(), &[]);
    let attached = |program: &str| {
        metric_value(
            &daemon.scrape(),
            "portmon_program_attached",
            &[("program", program)],
        )
    };
    assert_eq!(attached("bind4"), Some(1.0));
    detach_from_outside("bind4");
    assert_eq!(attached("bind4"), Some(0.0), "detached by another process");
    assert_eq!(attached("connect4"), Some(1.0), "its neighbours stay");
}
