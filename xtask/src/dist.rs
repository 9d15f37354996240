//! `cargo xtask dist`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in `portmon/Cargo.toml` (the binary, the systemd
//! unit, the default configuration, the Grafana dashboard, the alert rules,
//! the man page, the shell completions, copyright and changelog), and a
//! tarball of the same tree, in `<target dir>/dist/`.
//!
//! cargo-deb rather than a tree staged for `dpkg-deb --build`: it is what
//! the Rust ecosystem packages with, and it does what a hand-made builder
//! gets wrong one by one (Installed-Size, the gzipped changelog, library
//! dependencies through dpkg-shlibdeps, conffiles, stripping, ownership).

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{setup, shell};

/// Version of every crate in the workspace, and so of the package.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Debian revision cargo-deb gives a package whose metadata names none.
const REVISION: &str = "1";

/// What the built binary writes for the package, by the file name
/// `[package.metadata.deb]` takes it from under `target/release/generated/`.
/// cargo-deb gzips man pages only when they are not under `target/`, so the
/// page is gzipped here (`.gz` names), as Debian policy wants it.
const GENERATED: &[(&[&str], &str)] = &[
    (&["manpage"], "portmon.1.gz"),
    (&["completions", "bash"], "portmon.bash"),
    (&["completions", "zsh"], "_portmon"),
    (&["completions", "fish"], "portmon.fish"),
];

/// Builds both artifacts and prints their paths.
pub fn run() -> Result<()> {
    setup::ensure()?;
    shell::cargo(&["build", "--release", "--locked", "--package", "portmon"])?;
    let target = shell::target_dir();
    let binary = target.join("release/portmon");
    generate(&binary, &target.join("release/generated"))?;

    let dist = target.join("dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let arch = shell::output("dpkg", &["--print-architecture"])
        .map(|a| a.trim().to_owned())
        .context("dpkg --print-architecture failed: is this a Debian system?")?;
    let deb = dist.join(format!("portmon_{VERSION}-{REVISION}_{arch}.deb"));
    let _ = fs::remove_file(&deb);
    // Debug info is stripped (the release profile keeps line tables for
    // the binary's own backtraces); no separate -dbgsym package.
    let mut build = shell::cargo_command(&[
        "deb",
        "--package",
        "portmon",
        "--no-build",
        "--strip",
        "--no-dbgsym",
        "--no-separate-debug-symbols",
        "--output",
    ]);
    build.arg(&deb);
    shell::run(build).context("cargo deb failed: `cargo xtask setup` installs cargo-deb")?;
    if !deb.exists() {
        bail!("cargo deb left no {}", deb.display());
    }

    let tarball = tarball(&deb, &dist, &arch)?;
    for artifact in [&deb, &tarball] {
        let size = fs::metadata(artifact).map(|m| m.len()).unwrap_or(0);
        println!("xtask: built {} ({size} bytes)", artifact.display());
    }
    Ok(())
}

/// The man page and the completions, from the binary's own command line.
fn generate(binary: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (args, file) in GENERATED {
        let out = Command::new(binary)
            .args(*args)
            .output()
            .with_context(|| format!("running {} {}", binary.display(), args.join(" ")))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "{} {} failed: {}",
                binary.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = dir.join(file);
        match file.strip_suffix(".gz") {
            Some(plain) => {
                let plain = dir.join(plain);
                fs::write(&plain, &out.stdout).with_context(|| format!("writing {}", plain.display()))?;
                // -n: no name or time stamp inside, so the same page makes
                // the same bytes (lintian checks for it).
                let mut gzip = Command::new("gzip");
                gzip.args(["-9", "-n", "-f"]).arg(&plain);
                shell::run(gzip)?;
            }
            None => fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?,
        }
    }
    Ok(())
}

/// `portmon-VERSION-ARCH.tar.gz`: the package's tree as it installs, for
/// hosts without dpkg; unpacked from the .deb so the two cannot differ.
fn tarball(deb: &Path, dist: &Path, arch: &str) -> Result<std::path::PathBuf> {
    let name = format!("portmon-{VERSION}-{arch}");
    let stage = dist.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let mut unpack = Command::new("dpkg-deb");
    unpack.arg("--extract").arg(deb).arg(&stage);
    shell::run(unpack)?;
    let tarball = dist.join(format!("{name}.tar.gz"));
    let mut tar = Command::new("tar");
    tar.arg("-czf")
        .arg(&tarball)
        .args(["--owner=0", "--group=0", "--sort=name", "-C"])
        .arg(dist)
        .arg(&name);
    shell::run(tar)?;
    Ok(tarball)
}
