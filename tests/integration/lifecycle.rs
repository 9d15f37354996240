//! The daemon's life: it refuses to start without privileges, with one clear
//! line; SIGTERM detaches everything; after SIGKILL nothing stays attached.

use std::{os::unix::process::ExitStatusExt as _, process::Command, time::Duration};

use portmon_tests::{
    attachable_programs, loaded_portmon_programs, portmon_bin, serial, settled_portmon_programs, wait_until,
    Daemon,
};

const PROGRAMS: usize = portmon::kernel::bpf::PROGRAMS.len();

#[test]
fn sigterm_detaches_every_program_and_exits_cleanly() {
    let _serial = serial();
    let before = settled_portmon_programs();
    let daemon = Daemon::start("127.0.0.1:17455".parse().unwrap(), &[]);
    assert_eq!(
        loaded_portmon_programs(),
        before + PROGRAMS,
        "programs while running"
    );
    let status = daemon.stop_with(libc::SIGTERM);
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        wait_until(Duration::from_secs(5), || loaded_portmon_programs() == before),
        "programs left after SIGTERM: {}",
        loaded_portmon_programs() - before
    );
}

#[test]
fn after_sigkill_nothing_stays_attached() {
    let _serial = serial();
    let before = settled_portmon_programs();
    let daemon = Daemon::start("127.0.0.1:17456".parse().unwrap(), &[]);
    assert_eq!(
        loaded_portmon_programs(),
        before + PROGRAMS,
        "programs while running"
    );
    let status = daemon.stop_with(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        wait_until(Duration::from_secs(5), || loaded_portmon_programs() == before),
        "programs left after SIGKILL: {}",
        loaded_portmon_programs() - before
    );
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
}
