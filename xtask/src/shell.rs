//! Running commands, with the failure saying which one.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs a command (in the workspace root unless it names a directory) and
/// fails if it does.
pub fn run(mut command: Command) -> Result<()> {
    if command.get_current_dir().is_none() {
        command.current_dir(workspace_root());
    }
    let shown = format!("{command:?}");
    println!("xtask: running {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs cargo with these arguments.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(cargo_command(args))
}

/// Cargo with these arguments, to be given more before [`run`].
pub fn cargo_command(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args);
    command
}

/// `program` (rustup's `cargo` or `rustup` itself) as run in `portmon-ebpf/`,
/// where rustup takes the toolchain from `rust-toolchain.toml` and cargo
/// the BPF target and flags from `.cargo/config.toml`. The toolchain
/// `cargo xtask` itself runs with, and any rustflags from the environment
/// (they would replace the config file's), are left out.
pub fn in_ebpf_crate(program: &str) -> Command {
    let mut command = Command::new(program);
    command.current_dir(workspace_root().join("portmon-ebpf"));
    for key in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(key);
    }
    // A relative target dir would be taken from portmon-ebpf/.
    command.env("CARGO_TARGET_DIR", target_dir());
    command
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace
/// root), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The standard output of a command, if it succeeds.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command in the foreground in place of xtask.
pub fn exec(command: Command) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut command = command;
    let shown = format!("{command:?}");
    let err = command.exec();
    Err(err).with_context(|| format!("cannot exec {shown}"))
}
