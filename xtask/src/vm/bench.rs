//! `cargo xtask vm-bench`: the scrape benchmark inside a guest, for what
//! the host's kernel cannot show (a kernel that refuses BPF tracing
//! programs runs no established-table walk). The guest is the one
//! `vm-test` boots, with the benchmark binary where the tests would be, a
//! release daemon, and the part to run named on the kernel's command line
//! (init passes it on as the environment).
//!
//! Under TCG a guest is many times slower than the host, so its absolute
//! figures say little; ratios between layouts measured in the same guest
//! are what it is for.

use std::time::Duration;

use anyhow::{bail, Result};

use super::{boot, cargo_executable, initramfs, kernel, qemu};
use crate::shell;

/// Runs `PORTMON_SCRAPE_BENCH=part` of the scrape benchmark on `kernel`.
pub fn run(kernel_spec: &str, part: &str, timeout: Duration) -> Result<()> {
    let cache = shell::target_dir().join("vm");
    let kernel = kernel::provide(kernel_spec, &cache)?;
    shell::cargo(&[
        "build",
        "--release",
        "--locked",
        "--package",
        "portmon",
        "--bin",
        "portmon",
    ])?;
    let bench = cargo_executable(
        &[
            "bench",
            "--locked",
            "--package",
            "portmon-tests",
            "--bench",
            "scrape",
        ],
        "scrape",
    )?;
    let root = shell::workspace_root();
    let shared = initramfs::build_shared(
        &initramfs::Contents {
            integration: &bench,
            portmon: &shell::target_dir().join("release/portmon"),
            harness_args: &[],
            same_path: &[],
            tests_dir: &root.join("tests"),
        },
        &cache.join("bench-initramfs"),
    )?;
    let dir = cache.join("bench-runs").join(&kernel.release);
    let accel = qemu::Accel::detect();
    println!(
        "xtask: vm-bench: scrape part {part} on {} with {accel}",
        kernel.release
    );
    let outcome = boot(
        &kernel,
        &shared,
        &dir,
        accel,
        timeout,
        &format!("PORTMON_SCRAPE_BENCH={part}"),
    )?;
    let text = std::fs::read_to_string(&outcome.result_log).unwrap_or_default();
    for line in text.lines() {
        println!("  {}", line.trim_end_matches('\r'));
    }
    if let Some(trouble) = &outcome.trouble {
        bail!("vm-bench on {}: {trouble}", kernel.release);
    }
    if outcome.exit != Some(0) {
        bail!(
            "the benchmark failed in the guest (exit {:?}): {}",
            outcome.exit,
            outcome.result_log.display()
        );
    }
    println!(
        "xtask: vm-bench took {:.0} s; the guest's output is in {}",
        outcome.elapsed.as_secs_f64(),
        outcome.result_log.display()
    );
    Ok(())
}
