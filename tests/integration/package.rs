//! The Debian package, for real: `cargo xtask dist`, lintian with no error
//! and no warning, `dpkg -i` on this machine (then again, as an upgrade that
//! must keep a unit the admin disabled disabled), the man page rendered by
//! `man` and the completions loaded by bash from where the package put
//! them, `systemd-analyze verify` and `security` on the installed unit,
//! the daemon started from the package as the unit starts it (its user, its
//! capabilities through setpriv, its config file, a real NOTIFY_SOCKET),
//! scraped, stopped, then `dpkg --purge` and nothing left behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use portmon_tests::{
    http_get, portmon_bin, serial,
    supervised::{setpriv_args, unit_values, Supervised},
};

const UNIT: &str = "/lib/systemd/system/portmon.service";
const CONFIG: &str = "/etc/portmon/portmon.toml";

/// Files the package must install.
const INSTALLED: &[&str] = &[
    "/usr/bin/portmon",
    UNIT,
    CONFIG,
    "/usr/share/doc/portmon/README.md",
    "/usr/share/portmon/grafana/portmon.json",
    "/usr/share/portmon/prometheus/portmon.rules.yml",
    "/usr/share/doc/portmon/copyright",
    "/usr/share/doc/portmon/changelog.Debian.gz",
    MAN_PAGE,
    BASH_COMPLETION,
    "/usr/share/zsh/vendor-completions/_portmon",
    "/usr/share/fish/vendor_completions.d/portmon.fish",
];
const MAN_PAGE: &str = "/usr/share/man/man1/portmon.1.gz";
const BASH_COMPLETION: &str = "/usr/share/bash-completion/completions/portmon";
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn succeeds(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn installed() -> bool {
    succeeds("dpkg-query", &["-W", "-f=${Status}", "portmon"])
        .1
        .contains("install ok installed")
}

/// Purges the package even when the test fails half-way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "portmon"]).output();
    }
}

/// The .deb `cargo xtask dist` built into this test run's target dir.
fn build_deb() -> PathBuf {
    let target = portmon_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    let status = Command::new(env!("CARGO"))
        .args(["run", "--locked", "--package", "xtask", "--", "dist"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo())
        .status()
        .expect("run cargo xtask dist");
    assert!(status.success(), "cargo xtask dist failed");
    let arch = succeeds("dpkg", &["--print-architecture"]).1.trim().to_owned();
    let deb = target.join(format!("dist/portmon_{}-1_{arch}.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.exists(), "{} missing", deb.display());
    deb
}

/// The one lintian override the package ships (deploy/debian/lintian-overrides
/// says why); any other would hide a finding.
const OVERRIDES: &[&str] = &["initial-upload-closes-no-bugs"];

/// Debian's own checker finds nothing to say at warning level or above,
/// and nothing is overridden but what [`OVERRIDES`] lists.
fn lintian_is_clean(deb: &Path) {
    let (ok, out) = succeeds(
        "lintian",
        // No --fail-on: with --show-overrides it would count the
        // overridden tags; the E: and W: lines below are the verdict.
        &[
            "--display-level",
            ">=warning",
            "--show-overrides",
            "--tag-display-limit",
            "0",
            deb.to_str().unwrap(),
        ],
    );
    let findings: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(ok && findings.is_empty(), "lintian:\n{out}");
    let overridden: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("O: portmon: "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(overridden, OVERRIDES, "lintian:\n{out}");
}

/// The installed man page renders, and the installed bash completion
/// registers itself, as do those the installed binary prints.
fn man_page_and_completions_work() {
    let out = Command::new("man")
        .args(["--warnings", "-l", MAN_PAGE])
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("run man (man-db)");
    let page = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.trim().is_empty(),
        "man -l {MAN_PAGE}: {warnings}"
    );
    for text in ["portmon(1)", "NAME", "portmon ports", "portmon completions"] {
        assert!(page.contains(text), "{text} missing from the page:\n{page}");
    }
    for script in [
        format!("source {BASH_COMPLETION} && complete -p portmon"),
        "source <(/usr/bin/portmon completions bash) && complete -p portmon".to_owned(),
    ] {
        let (ok, out) = succeeds("bash", &["-c", &script]);
        assert!(ok && out.contains("-F _portmon"), "{script}: {out}");
    }
}

/// `systemctl is-enabled portmon.service`: it reads the unit links, with or
/// without a running systemd.
fn unit_state() -> String {
    succeeds("systemctl", &["is-enabled", "portmon.service"])
        .1
        .trim()
        .to_owned()
}

/// A first install enables the unit; once the admin disables it, installing
/// the package again (an upgrade: postinst sees the old version) leaves it
/// disabled.
fn keeps_the_admins_choice_on_upgrade(deb: &Path) {
    assert_eq!(unit_state(), "enabled", "a first install enables the unit");
    let (ok, out) = succeeds("systemctl", &["disable", "portmon.service"]);
    assert!(ok, "systemctl disable: {out}");
    assert_eq!(unit_state(), "disabled");
    let (ok, out) = succeeds("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i again (upgrade): {out}");
    assert_eq!(
        unit_state(),
        "disabled",
        "the upgrade enabled a unit the admin disabled"
    );
}

#[test]
fn deb_installs_runs_as_its_unit_and_purges_clean() {
    let _serial = serial();
    assert!(
        !installed() && !Path::new("/etc/portmon").exists(),
        "portmon is already installed here: this test installs and purges it, so it needs a machine without it"
    );
    let user_before = succeeds("getent", &["passwd", "portmon"]).0;
    let deb = build_deb();
    lintian_is_clean(&deb);
    let _purge = Purge;
    let (ok, out) = succeeds("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i: {out}");
    for file in INSTALLED {
        assert!(Path::new(file).exists(), "{file} not installed");
    }
    let (ok, _) = succeeds("getent", &["passwd", "portmon"]);
    assert!(ok, "the package did not create user portmon");
    man_page_and_completions_work();
    keeps_the_admins_choice_on_upgrade(&deb);

    let (ok, out) = succeeds("systemd-analyze", &["verify", UNIT]);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (_, out) = succeeds("systemd-analyze", &["security", "--offline=true", UNIT]);
    let exposure: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for portmon.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    assert!(exposure <= 2.5, "exposure {exposure} is above OK:\n{out}");

    // The operator's edit: a listen address this test owns.
    std::fs::write(CONFIG, "listen = \"127.0.0.1:17485\"\nport-series-limit = 200\n").expect("edit config");
    let unit = std::fs::read_to_string(UNIT).expect("read installed unit");
    assert_eq!(
        unit_values(&unit, "RestartPreventExitStatus"),
        ["64"],
        "a bad configuration (exit 64) must not restart forever"
    );
    let user = unit_values(&unit, "User").pop().expect("User=");
    let caps = unit_values(&unit, "AmbientCapabilities");
    let exec = unit_values(&unit, "ExecStart");
    let env: Vec<(String, String)> = unit_values(&unit, "Environment")
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    assert_eq!(exec[0], "/usr/bin/portmon", "{exec:?}");
    let mut args = setpriv_args(&user, &caps);
    args.extend(exec);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut daemon = Supervised::spawn("deb", "setpriv".as_ref(), &args, &env);
    daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log_text()));
    let addr = "127.0.0.1:17485".parse().unwrap();
    assert!(matches!(http_get(addr, "/healthz"), Ok((200, _))));
    let (status, metrics) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    for program in portmon_tests::default_programs() {
        let line = format!("portmon_program_attached{{program=\"{program}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing");
    }
    assert!(
        metrics.contains("portmon_port_series_limit 200"),
        "config file not read"
    );
    // No journal here: the unit's journald format falls back to JSON lines.
    let log = daemon.log_text();
    assert!(
        log.lines()
            .filter(|l| !l.is_empty())
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "log lines are not structured:\n{log}"
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    drop(daemon);

    let (ok, out) = succeeds("dpkg", &["-r", "portmon"]);
    assert!(ok, "dpkg -r: {out}");
    assert!(!Path::new("/usr/bin/portmon").exists());
    assert!(Path::new(CONFIG).exists(), "dpkg -r must keep the conffile");
    let (ok, out) = succeeds("dpkg", &["--purge", "portmon"]);
    assert!(ok, "dpkg --purge: {out}");
    assert!(!installed());
    for gone in ["/etc/portmon", "/var/lib/portmon", UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    assert_eq!(
        succeeds("getent", &["passwd", "portmon"]).0,
        user_before,
        "user portmon left after purge"
    );
}
