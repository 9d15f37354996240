//! Installs what building and testing portmon need, when it is missing:
//! Debian packages (LLVM 22 for bpf-linker, Prometheus and promtool for the
//! exporter tests, iproute2's `ss`), `rust-src` for the pinned nightly,
//! `bpf-linker`, and the tracefs and bpffs mounts.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::shell;

/// Debian packages, each with a file that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("libpolly-22-dev", "/usr/lib/llvm-22/lib/libPolly.a"),
    ("prometheus", "/usr/bin/prometheus"),
    ("iproute2", "/usr/bin/ss"),
    ("util-linux", "/usr/bin/setpriv"),
];

/// The bpf-linker release this project builds with, against LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_mounts()?;
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {}: run `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    shell::run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing);
    install.env("DEBIAN_FRONTEND", "noninteractive");
    shell::run(install)
}

/// The nightly channel pinned for the kernel crate.
pub fn ebpf_toolchain() -> Result<String> {
    let path = shell::workspace_root().join("portmon-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|r| r.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no channel in {}", path.display()))
}

fn ensure_rust_src() -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    let installed = shell::output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", &toolchain],
    )
    .with_context(|| {
        format!("toolchain {toolchain} is not installed: run `rustup toolchain install {toolchain}`")
    })?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", &toolchain]);
    shell::run(add)
}

fn ensure_bpf_linker() -> Result<()> {
    let version = shell::output("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let mut install = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path);
    shell::run(install)
}

/// tracefs for the tracepoint, bpffs for operators who pin; both are
/// missing on a fresh machine of this kind.
fn ensure_mounts() -> Result<()> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounted = |fs_type: &str| {
        mountinfo
            .lines()
            .any(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with(fs_type)))
    };
    for (fs_type, source, target) in [
        ("tracefs ", "nodev", "/sys/kernel/tracing"),
        ("bpf ", "bpffs", "/sys/fs/bpf"),
    ] {
        if mounted(fs_type) {
            continue;
        }
        if !is_root() {
            println!(
                "xtask: {} is not mounted; as root: mount -t {} {source} {target}",
                fs_type.trim(),
                fs_type.trim()
            );
            continue;
        }
        let mut mount = Command::new("mount");
        mount.args(["-t", fs_type.trim(), source, target]);
        shell::run(mount)?;
    }
    Ok(())
}
