//! `cargo xtask test`: every check CI runs.

use anyhow::Result;

use crate::{fuzz, iana, setup, shell, vm};

/// Seconds each fuzz target runs in `cargo xtask test`: a short pass that
/// catches a parser change that crashes at once; `cargo xtask fuzz` runs longer.
const FUZZ_SECONDS: u64 = 15;

pub fn run() -> Result<()> {
    let iana = setup::ensure_for_tests()?;
    shell::cargo(&["fmt", "--all", "--", "--check"])?;
    // The kernel crate only builds for the BPF target: it is linted there.
    shell::cargo(&[
        "clippy",
        "--locked",
        "--workspace",
        "--exclude",
        "portmon-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // In portmon-ebpf/, with its pinned toolchain and the target and flags
    // its build uses (portmon-ebpf/.cargo/config.toml).
    let mut ebpf_clippy = shell::in_ebpf_crate("cargo");
    ebpf_clippy.args([
        "clippy",
        "--locked",
        "--package",
        "portmon-ebpf",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    shell::run(ebpf_clippy)?;
    // Unit tests: no root needed.
    let mut unit = shell::cargo_command(&[
        "test",
        "--locked",
        "--workspace",
        "--exclude",
        "portmon-ebpf",
        "--exclude",
        "portmon-tests",
    ]);
    unit.env(iana::VAR, &iana);
    shell::run(unit)?;
    // Integration tests: real programs, as root; one at a time (they count
    // what is attached to the cgroup root).
    shell::cargo(&[
        "test",
        "--locked",
        "--package",
        "portmon-tests",
        "--test",
        "integration",
        "--",
        "--test-threads=1",
    ])?;
    fuzz::run(&[], std::time::Duration::from_secs(FUZZ_SECONDS))?;
    // The same tests on the other kernels of the matrix, in QEMU.
    vm::run_default()
}
