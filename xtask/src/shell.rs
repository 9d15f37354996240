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

/// Runs a command in the workspace root and fails if it does.
pub fn run(mut command: Command) -> Result<()> {
    command.current_dir(workspace_root());
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
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args);
    run(command)
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
