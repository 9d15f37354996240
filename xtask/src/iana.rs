//! IANA's full registry for the tests and benches: where the tests look for
//! it (the rule is theirs, `portmon/tests/support/iana.rs`, included here so
//! that there is one), else downloaded by `portmon registry update` into the
//! target directory. Found or downloaded, its path goes to the tests in
//! `PORTMON_IANA_CSV`.

use std::{
    net::{TcpStream, ToSocketAddrs as _},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::shell;

#[path = "../../portmon/tests/support/iana.rs"]
#[expect(dead_code, reason = "the file's entry point for test binaries is not xtask's")]
mod rule;

pub use rule::VAR;

/// The host of portmon's `registry::update::IANA_CSV_URL`. It is tried
/// before portmon is built to download from it, so that a machine with no
/// way there stops at once rather than after the build.
const IANA_HOST: &str = "www.iana.org";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the registry is, or where it will be downloaded.
#[derive(Debug)]
pub enum Located {
    /// A copy to use as it is.
    Found(PathBuf),
    /// None yet; IANA looked reachable. What was looked for, kept to say
    /// what is missing if the download fails.
    Download(rule::Missing),
}

/// Finds the registry, or checks that IANA can be reached to download it;
/// fails with one line naming the three ways to provide it otherwise. Run
/// before anything is built or installed.
pub fn locate() -> Result<Located> {
    match rule::locate(&shell::workspace_root(), &shell::target_dir()) {
        Ok(path) => Ok(Located::Found(path)),
        Err(missing) if missing.var.is_some() => bail!("{missing}"),
        Err(mut missing) => match reachable() {
            Ok(()) => Ok(Located::Download(missing)),
            Err(why) => {
                missing.download = Some(why);
                bail!("{missing}")
            }
        },
    }
}

/// The registry's path: the copy found, or IANA's current CSV downloaded
/// into the cache by `portmon registry update` (validated, and renamed into
/// place only when whole). Needs the tools `setup` installs: it builds
/// portmon.
pub fn provide(located: Located) -> Result<PathBuf> {
    let mut missing = match located {
        Located::Found(path) => return Ok(path),
        Located::Download(missing) => missing,
    };
    println!(
        "xtask: no IANA registry beside the checkout nor in the target directory: downloading \
         IANA's current one into {}",
        missing.cached.display()
    );
    shell::cargo(&["build", "--locked", "--package", "portmon", "--bin", "portmon"])?;
    let mut update = Command::new(shell::target_dir().join("debug/portmon"));
    update
        .args(["registry", "update", "--output"])
        .arg(&missing.cached);
    let out = update.output().context("cannot run the portmon just built")?;
    if !out.status.success() {
        // portmon says why in one line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        missing.download = Some(stderr.trim().trim_start_matches("portmon: ").to_owned());
        bail!("{missing}");
    }
    print!("xtask: {}", String::from_utf8_lossy(&out.stdout));
    Ok(missing.cached)
}

/// Whether a connection to IANA can be opened; a proxy from the
/// environment (which the download would use) is taken on trust.
fn reachable() -> Result<(), String> {
    let proxied = [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if proxied {
        return Ok(());
    }
    let addrs = (IANA_HOST, 443)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {IANA_HOST}: {e}"))?;
    let mut last = format!("{IANA_HOST} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {IANA_HOST} ({addr}): {e}"),
        }
    }
    Err(last)
}
