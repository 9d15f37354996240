//! Builds the kernel programs (`portmon-ebpf`) for the BPF target, so that
//! the daemon embeds them and nobody runs a separate step. Cargo is run in
//! `portmon-ebpf/`, where rustup finds the pinned toolchain
//! (`rust-toolchain.toml`) and cargo the target and flags
//! (`.cargo/config.toml`).

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("portmon/ has no parent")?;
    let ebpf_dir = root.join("portmon-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");

    for watched in [
        "portmon-ebpf/src",
        "portmon-ebpf/Cargo.toml",
        "portmon-ebpf/rust-toolchain.toml",
        "portmon-ebpf/.cargo/config.toml",
        "portmon-common/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // The rustup proxy on PATH, not `$CARGO`: only the proxy reads the
    // directory's rust-toolchain.toml.
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--package", "portmon-ebpf", "--release", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer cargo's settings (clippy's wrapper, host rustflags, its
    // target dir and toolchain) must not leak into the BPF build; any
    // RUSTFLAGS would also replace the config file's.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || matches!(key, "RUSTFLAGS" | "RUSTDOC" | "RUSTUP_TOOLCHAIN")
        {
            cargo.env_remove(key);
        }
    }
    // aya-ebpf's build script picks its architecture-specific bindings for
    // the host it is built on; the kernel the object runs under is the one
    // portmon is built for, which differs when cross-compiling.
    if let Ok(arch) = env::var("CARGO_CFG_TARGET_ARCH") {
        cargo.env("AYA_BPF_TARGET_ARCH", arch);
    }
    let status = cargo
        .status()
        .context("could not run cargo: is rustup's cargo on PATH?")?;
    if !status.success() {
        bail!(
            "building the kernel programs failed ({status}); `cargo xtask setup` installs what \
             they need (the toolchain pinned in portmon-ebpf/rust-toolchain.toml, bpf-linker)"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/portmon");
    fs::copy(&object, out_dir.join("portmon.bpf.o"))
        .with_context(|| format!("kernel object missing at {}", object.display()))?;
    Ok(())
}
