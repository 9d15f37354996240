//! Booting one kernel in QEMU with the tests' initramfs, and reading back
//! what the guest's init wrote to the second serial port.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// How the guest is run: KVM where it works, TCG elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `PORTMON_VM_ACCEL` (`kvm` or `tcg`) if set, else KVM when the host
    /// has the ordinary kind. A `/dev/kvm` served by `kvm_pvm` runs only
    /// guest kernels built for PVM, which Debian's are not: they hang
    /// before their first message, so it counts as none.
    pub fn detect() -> Self {
        match std::env::var("PORTMON_VM_ACCEL").as_deref() {
            Ok("kvm") => return Self::Kvm,
            Ok("tcg") => return Self::Tcg,
            _ => {}
        }
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable && !module("kvm_pvm") && (module("kvm_intel") || module("kvm_amd")) {
            Self::Kvm
        } else {
            Self::Tcg
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Self::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Self::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// One boot: the kernel, its initramfs, and where its logs go.
#[derive(Debug)]
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// Gets `console.log` (the kernel's messages), `result.log` (what init
    /// wrote for the host) and `qemu.log` (QEMU's own errors).
    pub dir: &'a Path,
    pub accel: Accel,
    pub timeout: Duration,
    /// More of the kernel's command line: `NAME=value` words the kernel
    /// does not know reach init as environment variables.
    pub append: &'a str,
}

/// What came back from a guest.
#[derive(Debug)]
pub struct Outcome {
    /// The harness's `test result:` counts, if it got that far.
    pub passed: Option<u32>,
    pub failed: Option<u32>,
    /// The status init reported for the test binary.
    pub exit: Option<i32>,
    /// Tests the harness listed as failed.
    pub failures: Vec<String>,
    /// What tests said they skipped on this kernel, and why.
    pub skipped: Vec<String>,
    /// The `portmon check` lines, as the guest printed them.
    pub check: Vec<String>,
    pub elapsed: Duration,
    /// Why the guest gave no result, when it gave none.
    pub trouble: Option<String>,
    pub result_log: PathBuf,
    pub console_log: PathBuf,
}

impl Outcome {
    /// Every test ran and passed, and at least one ran.
    pub fn passed_all(&self) -> bool {
        self.trouble.is_none()
            && self.exit == Some(0)
            && self.failed == Some(0)
            && self.passed.is_some_and(|n| n > 0)
    }
}

/// Boots, waits for the guest to power off (killing it at the timeout), and
/// reads its result.
pub fn run(boot: &Boot<'_>) -> Result<Outcome> {
    std::fs::create_dir_all(boot.dir).with_context(|| format!("creating {}", boot.dir.display()))?;
    let console_log = boot.dir.join("console.log");
    let result_log = boot.dir.join("result.log");
    let qemu_log = boot.dir.join("qemu.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(boot.accel.args())
        .args(["-smp", "2", "-m", "2048", "-nodefaults", "-display", "none"])
        // The guest powers off when done; a panic (panic=-1) reboots, which
        // -no-reboot turns into QEMU's exit too.
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 rdinit=/init {}", boot.append).trim_end())
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        .arg("-serial")
        .arg(format!("file:{}", result_log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&qemu_log).with_context(|| format!("creating {}", qemu_log.display()))?,
        );
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64: run `cargo xtask setup` (qemu-system-x86)")?;
    let mut trouble = None;
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            if !status.success() {
                let log = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                trouble = Some(format!("qemu exited with {status}: {}", log.trim()));
            }
            break;
        }
        if started.elapsed() > boot.timeout {
            let _ = child.kill();
            let _ = child.wait();
            trouble = Some(format!(
                "the guest did not finish within {} s and was killed",
                boot.timeout.as_secs()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&result_log).unwrap_or_default();
    let mut outcome = parse(&text.replace('\r', ""));
    outcome.elapsed = elapsed;
    outcome.result_log = result_log;
    outcome.console_log = console_log;
    if outcome.trouble.is_none() {
        outcome.trouble = trouble;
    }
    if outcome.trouble.is_none() && outcome.exit.is_none() {
        outcome.trouble = Some("the guest stopped before its init reported an exit status".into());
    }
    Ok(outcome)
}

/// Reads the result channel: init's `portmon-vm:` lines and the harness's.
fn parse(text: &str) -> Outcome {
    let mut outcome = Outcome {
        passed: None,
        failed: None,
        exit: None,
        failures: Vec::new(),
        skipped: Vec::new(),
        check: Vec::new(),
        elapsed: Duration::ZERO,
        trouble: None,
        result_log: PathBuf::new(),
        console_log: PathBuf::new(),
    };
    for line in text.lines() {
        if let Some(status) = line.strip_prefix("portmon-vm: exit ") {
            outcome.exit = status.trim().parse().ok();
        } else if let Some(check) = line.strip_prefix("portmon-vm: check: ") {
            outcome.check.push(check.to_owned());
        } else if let Some(failed) = line.strip_prefix("portmon-vm: insmod ") {
            outcome.trouble = Some(format!("insmod {failed}"));
        } else if let Some(counts) = line.strip_prefix("test result: ") {
            // `ok. 30 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.2s`
            let count = |what: &str| {
                counts.split(';').find_map(|part| {
                    part.trim()
                        .trim_start_matches(|c: char| !c.is_ascii_digit())
                        .strip_suffix(what)
                        .and_then(|n| n.trim().parse().ok())
                })
            };
            outcome.passed = count("passed");
            outcome.failed = count("failed");
        } else if let Some(why) = line.split_once("portmon-tests: skipped: ").map(|(_, w)| w) {
            if !outcome.skipped.iter().any(|s| s == why) {
                outcome.skipped.push(why.to_owned());
            }
        }
    }
    // The harness ends with the failed tests' names, one an indented line
    // under the last `failures:`.
    if let Some((_, list)) = text.rsplit_once("\nfailures:\n") {
        outcome.failures = list
            .lines()
            .map_while(|l| l.strip_prefix("    "))
            .map(str::to_owned)
            .collect();
    }
    outcome
}

/// The last `n` lines of a log, for a message about a guest that hung or
/// died.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {}", l.trim_end_matches('\r')))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results() {
        let text = "portmon-vm: kernel 6.1.0-57-cloud-amd64\n\
                    portmon-vm: check: ok          bind4\n\
                    running 3 tests\n\
                    test counting::a ... ok\n\
                    test failures::b ... noise\nFAILED\n\
                    \nsuccesses:\n\n---- counting::a stdout ----\nportmon-tests: skipped: old kernel\n\
                    \nfailures:\n\n---- failures::b stdout ----\npanicked\n\
                    \nfailures:\n    failures::b\n\n\
                    test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 9 filtered out; finished in 3.10s\n\
                    portmon-vm: exit 101\n";
        let outcome = parse(text);
        assert_eq!(outcome.passed, Some(2));
        assert_eq!(outcome.failed, Some(1));
        assert_eq!(outcome.exit, Some(101));
        assert_eq!(outcome.failures, ["failures::b"]);
        assert_eq!(outcome.check, ["ok          bind4"]);
        assert_eq!(outcome.skipped, ["old kernel"]);
        assert!(!outcome.passed_all());

        let ok = parse("test result: ok. 4 passed; 0 failed; 0 ignored\nportmon-vm: exit 0\n");
        assert!(ok.passed_all());
        assert!(!parse("portmon-vm: exit 0\n").passed_all(), "no test ran");
    }
}
