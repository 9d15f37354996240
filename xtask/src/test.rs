//! `cargo xtask test`: every check CI runs.

use std::process::Command;

use anyhow::Result;

use crate::{setup, shell};

pub fn run() -> Result<()> {
    setup::ensure()?;
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
    let toolchain = setup::ebpf_toolchain()?;
    let mut ebpf_clippy = Command::new("rustup");
    ebpf_clippy
        .args([
            "run",
            &toolchain,
            "cargo",
            "clippy",
            "--locked",
            "--package",
            "portmon-ebpf",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    shell::run(ebpf_clippy)?;
    // Unit tests: no root needed.
    shell::cargo(&[
        "test",
        "--locked",
        "--workspace",
        "--exclude",
        "portmon-ebpf",
        "--exclude",
        "portmon-tests",
    ])?;
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
    Ok(())
}
