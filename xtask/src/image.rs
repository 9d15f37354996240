//! `cargo xtask image`: portmon as a container image, `portmon:<version>`
//! in the local container storage (podman's and buildah's), built offline
//! from `deploy/container/Containerfile`: the release binary with its
//! debug information stripped, the shared libraries and loader `ldd` names
//! for it (as the host has them, so the image runs what the tests ran),
//! and `/etc/services`.
//!
//! Copied libraries rather than a static build: the kernel crate's build
//! and aya already fix the toolchain; a musl target would be a second one
//! to keep, for a few megabytes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{setup, shell};

/// Version of every crate in the workspace, and so the image's tag.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The image's name, as the DaemonSet names it.
pub fn tag() -> String {
    format!("portmon:{VERSION}")
}

/// Builds the image and prints its name and size.
pub fn run() -> Result<()> {
    setup::ensure()?;
    setup::ensure_container_tools()?;
    shell::cargo(&["build", "--release", "--locked", "--package", "portmon"])?;
    let target = shell::target_dir();
    let context = target.join("image");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    let binary = rootfs.join("usr/bin/portmon");
    fs::create_dir_all(binary.parent().unwrap_or(&rootfs))
        .with_context(|| format!("creating {}", rootfs.display()))?;
    let mut strip = Command::new("strip");
    strip
        .arg("--strip-debug")
        .arg("-o")
        .arg(&binary)
        .arg(target.join("release/portmon"));
    shell::run(strip)?;
    for library in shared_libraries(&binary)? {
        copy_into(&rootfs, &library)?;
    }
    copy_into(&rootfs, Path::new("/etc/services"))
        .context("the image needs a port registry: install netbase for /etc/services")?;

    let containerfile = shell::workspace_root().join("deploy/container/Containerfile");
    let mut build = Command::new("buildah");
    build
        .arg("build")
        .arg("--file")
        .arg(&containerfile)
        .args(["--build-arg", &format!("VERSION={VERSION}")])
        .args(["--tag", &tag()])
        .arg(&context);
    shell::run(build)?;
    let size =
        shell::output("podman", &["image", "inspect", "--format", "{{.Size}}", &tag()]).unwrap_or_default();
    println!("xtask: built image {} ({} bytes)", tag(), size.trim());
    Ok(())
}

/// The libraries and the loader a dynamic executable loads, as `ldd` finds them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd: install libc-bin")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, the loader as
    // `/lib64/ld-linux-x86-64.so.2 (0x…)`, the vDSO with no path at all.
    let libraries = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split_once("=>").map_or(line, |(_, path)| path);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    Ok(libraries)
}

/// Copies `file` (its content, through symbolic links) to the same path under `rootfs`.
fn copy_into(rootfs: &Path, file: &Path) -> Result<()> {
    let dest = rootfs.join(file.strip_prefix("/").unwrap_or(file));
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(file, &dest).with_context(|| format!("copying {} to {}", file.display(), dest.display()))?;
    Ok(())
}
