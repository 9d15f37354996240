//! `cargo xtask vm-test`: the integration tests on other kernels than the
//! host's, each booted in QEMU with a busybox initramfs that holds the test
//! binary as cargo built it.
//!
//! Which tests run in the guests: every module that loads the kernel
//! programs and checks what they see — every program loads and attaches,
//! exact counts (v4, v6, TCP, UDP), each failure's errno, pool exhaustion,
//! detach after SIGTERM and SIGKILL, the inventory against `ss`, the
//! daemon scraped by a real Prometheus, `portmon ports`, and transparency.
//! Those are what differ between kernels (the verifier, the hooks, the
//! sock_diag answers). The rest stays on the host, where `cargo xtask test`
//! runs it: `deploy` checks files (dashboard, alert rules, Kubernetes
//! manifests, with Python and promtool) whose kernel paths `exporter`
//! already covers; `package` and `service` need dpkg and systemd, and `cli`
//! bash and man, which a busybox guest has not. One test of `ports` stays on the host too: it runs
//! a Python "service" to check the systemd unit named from its cgroup, a
//! path portmon reads in user space; the kernel side of it (the owner's
//! cgroup recorded at bind) is checked by `counting`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::shell;

pub mod bench;
mod initramfs;
mod kernel;
mod qemu;

/// The harness's filters: the modules that run in the guests (see above).
const GUEST_MODULES: &[&str] = &[
    "counting::",
    "failures::",
    "exhaustion::",
    "lifecycle::",
    "exporter::",
    "ports::",
    "transparency::",
    "connect_search::",
];

/// Tests of those modules that stay on the host (see above).
const HOST_ONLY: &[&str] = &["ports::ports_names_the_systemd_unit_of_the_owners_cgroup"];

/// Files the tests open by a path relative to the tests crate, compiled in
/// (`CARGO_MANIFEST_DIR/../…`): the guest gets them at the same path.
const WORKSPACE_FILES: &[&str] = &["deploy/prometheus/portmon.rules.yml"];

/// A guest gets this long, boot to power-off, before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs the guest tests on each kernel (`kernel::DEFAULT` when none is
/// given); fails when any test fails or any guest gives no result.
pub fn run(kernels: &[String], timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let specs: Vec<String> = if kernels.is_empty() {
        kernel::DEFAULT.iter().map(|s| (*s).to_owned()).collect()
    } else {
        kernels.to_vec()
    };
    let cache = shell::target_dir().join("vm");
    // Resolved and downloaded first: a name apt does not know stops the run
    // before anything is built.
    let kernels = specs
        .iter()
        .map(|spec| kernel::provide(spec, &cache))
        .collect::<Result<Vec<_>>>()?;
    let (integration, portmon) = build()?;
    let root = shell::workspace_root();
    let harness_args = harness_args();
    let same_path: Vec<PathBuf> = WORKSPACE_FILES.iter().map(|f| root.join(f)).collect();
    let shared = initramfs::build_shared(
        &initramfs::Contents {
            integration: &integration,
            portmon: &portmon,
            harness_args: &harness_args,
            same_path: &same_path,
            tests_dir: &root.join("tests"),
        },
        &cache.join("initramfs"),
    )?;
    let accel = qemu::Accel::detect();
    println!("xtask: vm-test boots {} kernel(s) with {accel}", kernels.len());

    let mut outcomes = Vec::new();
    for kernel in &kernels {
        let dir = cache.join("runs").join(&kernel.release);
        println!("xtask: booting {} ({})", kernel.release, kernel.package);
        let outcome = boot(kernel, &shared, &dir, accel, timeout, "")?;
        report(&kernel.release, &outcome);
        outcomes.push((kernel.release.clone(), outcome));
    }

    println!("xtask: vm-test, {:.0} s in all:", started.elapsed().as_secs_f64());
    for (release, outcome) in &outcomes {
        println!("  {}", summary(release, outcome));
    }
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| !o.passed_all())
        .map(|(r, _)| r.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "the guest tests failed on {}: read the result and console logs named above",
            bad.join(", ")
        );
    }
    Ok(())
}

/// The filters, the host-only tests skipped by their exact names, and the
/// output of passing tests shown, for the lines that say what a test
/// skipped on this kernel.
fn harness_args() -> Vec<String> {
    let mut args: Vec<String> = GUEST_MODULES.iter().map(|m| (*m).to_owned()).collect();
    for test in HOST_ONLY {
        args.extend(["--skip".to_owned(), (*test).to_owned()]);
    }
    args.push("--show-output".to_owned());
    args
}

/// Builds the daemon and the integration test binary, as `cargo xtask test`
/// does on the host, and returns their paths.
fn build() -> Result<(PathBuf, PathBuf)> {
    shell::cargo(&["build", "--locked", "--package", "portmon", "--bin", "portmon"])?;
    let integration = cargo_executable(
        &[
            "test",
            "--locked",
            "--package",
            "portmon-tests",
            "--test",
            "integration",
        ],
        "integration",
    )?;
    Ok((integration, shell::target_dir().join("debug/portmon")))
}

/// Builds with `cargo <args> --no-run` and returns the executable cargo
/// made for the target `name`.
pub(crate) fn cargo_executable(args: &[&str], name: &str) -> Result<PathBuf> {
    let mut all = args.to_vec();
    all.extend(["--no-run", "--message-format=json-render-diagnostics"]);
    let out = shell::cargo_command(&all)
        .current_dir(shell::workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building {name} failed: fix the build, then run again");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no executable for {name}"))
}

/// Boots `kernel` with the shared archive and the kernel's modules, in
/// `dir`; `append` goes on the kernel's command line.
pub(crate) fn boot(
    kernel: &kernel::Kernel,
    shared: &Path,
    dir: &Path,
    accel: qemu::Accel,
    timeout: Duration,
    append: &str,
) -> Result<qemu::Outcome> {
    let modules = initramfs::build_modules(&kernel.modules, &dir.join("modules"))?;
    let initrd = dir.join("initrd.cpio");
    concatenate(&[shared, &modules], &initrd)?;
    qemu::run(&qemu::Boot {
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        dir,
        accel,
        timeout,
        append,
    })
}

/// Writes the archives one after the other: the kernel unpacks each in
/// turn.
fn concatenate(parts: &[&Path], into: &Path) -> Result<()> {
    let mut out = std::fs::File::create(into).with_context(|| format!("creating {}", into.display()))?;
    for part in parts {
        let mut input = std::fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut input, &mut out).with_context(|| format!("writing {}", into.display()))?;
    }
    Ok(())
}

fn summary(release: &str, o: &qemu::Outcome) -> String {
    let ran = o.passed.unwrap_or(0) + o.failed.unwrap_or(0);
    let verdict = if o.passed_all() { "ok" } else { "FAILED" };
    format!(
        "{release:<32} {verdict:<6} {ran} ran, {} passed, {} failed, {:.0} s",
        o.passed.unwrap_or(0),
        o.failed.unwrap_or(0),
        o.elapsed.as_secs_f64()
    )
}

fn report(release: &str, o: &qemu::Outcome) {
    println!("xtask: {}", summary(release, o));
    for line in &o.check {
        println!("    check: {line}");
    }
    for why in &o.skipped {
        println!("    skipped: {why}");
    }
    for name in &o.failures {
        println!("    failed: {name}");
    }
    if let Some(trouble) = &o.trouble {
        println!("xtask: {release}: {trouble}");
        println!(
            "  last lines of {}:\n{}",
            o.result_log.display(),
            qemu::tail(&o.result_log, 15)
        );
        println!(
            "  last lines of {}:\n{}",
            o.console_log.display(),
            qemu::tail(&o.console_log, 15)
        );
    } else if !o.passed_all() {
        println!("  the harness's output: {}", o.result_log.display());
    }
}

/// Runs `cargo xtask vm-test` as a step of `cargo xtask test`, with the
/// default kernels.
pub fn run_default() -> Result<()> {
    run(&[], DEFAULT_TIMEOUT)
}
