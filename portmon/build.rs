//! Builds the kernel programs (`portmon-ebpf`) for the BPF target with the
//! toolchain pinned in `portmon-ebpf/rust-toolchain.toml`, so that the
//! daemon embeds them and nobody runs a separate step.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("portmon/ has no parent")?;
    let ebpf_dir = root.join("portmon-ebpf");
    let toolchain = pinned_toolchain(&ebpf_dir.join("rust-toolchain.toml"))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");

    for watched in [
        "portmon-ebpf/src",
        "portmon-ebpf/Cargo.toml",
        "portmon-ebpf/rust-toolchain.toml",
        "portmon-common/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            &toolchain,
            "cargo",
            "build",
            "--package",
            "portmon-ebpf",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // BTF in the object: socket storage maps need their value type described.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        // BPF ISA v3 (Linux 5.1; portmon needs 5.7 for its links): 32-bit
        // ALU and jumps, and atomic fetch-and-add, with which a kernel
        // program hands out map entries.
        "-Ctarget-cpu=v3".into(),
    ];
    // The outer cargo's settings (clippy's wrapper, host rustflags, its
    // target dir and toolchain) must not leak into the BPF build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || matches!(key, "RUSTFLAGS" | "RUSTDOC" | "RUSTUP_TOOLCHAIN")
        {
            cargo.env_remove(key);
        }
    }
    cargo.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    let status = cargo
        .status()
        .context("could not run rustup: is rustup on PATH?")?;
    if !status.success() {
        bail!(
            "building the kernel programs failed ({status}); `cargo xtask run` or `cargo xtask test` \
             installs what they need (toolchain {toolchain} with rust-src, bpf-linker)"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/portmon");
    fs::copy(&object, out_dir.join("portmon.bpf.o"))
        .with_context(|| format!("kernel object missing at {}", object.display()))?;
    Ok(())
}

/// The `channel` of a rust-toolchain.toml.
fn pinned_toolchain(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no channel in {}", path.display()))
}
