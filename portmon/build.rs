//! Builds the kernel programs (`portmon-ebpf`) for the BPF target, so that
//! the daemon embeds them and nobody runs a separate step. Cargo is run in
//! `portmon-ebpf/`, where rustup finds the pinned toolchain
//! (`rust-toolchain.toml`) and cargo the target and flags
//! (`.cargo/config.toml`). It also records what `portmon_build_info`
//! reports: the git revision and the compiler's version.

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
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    build_identity(root)?;

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

/// Sets `PORTMON_REVISION` (the short commit, or "unknown" where there is
/// no git checkout: a source tarball) and `PORTMON_RUSTC_VERSION`.
fn build_identity(root: &Path) -> Result<()> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let revision = git(&["rev-parse", "--short", "HEAD"]);
    // A commit moves HEAD or the branch it names (loose or packed); the
    // paths come from git because a worktree keeps them apart.
    if revision.is_some() {
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
                // A path that does not exist would make cargo run this script at every build.
                if Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
    }
    println!(
        "cargo:rustc-env=PORTMON_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );

    let rustc = env::var_os("RUSTC").context("cargo sets RUSTC for build scripts")?;
    let out = Command::new(&rustc)
        .arg("--version")
        .output()
        .with_context(|| format!("could not run {} --version", rustc.to_string_lossy()))?;
    // "rustc 1.95.0 (hash date)": the version alone keeps the label short.
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_owned();
    println!("cargo:rustc-env=PORTMON_RUSTC_VERSION={version}");
    Ok(())
}
