//! The guests' root file system: busybox, the integration test binary, the
//! daemon, the programs the tests run (`ip`, `ss`, Prometheus, `promtool`,
//! `setpriv`) with their shared libraries, and the files the daemon and the
//! tests read. One archive serves every kernel; each kernel's modules go in
//! a small second archive, which the kernel unpacks over the first.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::shell;

/// The guest's init, run by the kernel as `/init`.
const INIT: &str = include_str!("init.sh");

/// Programs the tests in the guests run, found on the host's PATH.
const PROGRAMS: &[&str] = &["ip", "ss", "prometheus", "promtool", "setpriv"];

/// Where the guest finds the per-kernel modules, the test binary, the daemon
/// and the harness's arguments (`init.sh` reads the same paths).
const GUEST_DIR: &str = "portmon";

/// What goes into the shared archive.
#[derive(Debug)]
pub struct Contents<'a> {
    pub integration: &'a Path,
    pub portmon: &'a Path,
    /// Arguments of the test harness: filters, `--skip`s.
    pub harness_args: &'a [String],
    /// Files the tests open by the path they were compiled with, copied
    /// to the same path in the guest.
    pub same_path: &'a [PathBuf],
    /// The tests crate's directory: those paths pass through it
    /// (`tests/../deploy/…`), so it must exist in the guest too.
    pub tests_dir: &'a Path,
}

/// Stages the shared root in `dir` and packs it into `dir.cpio`.
pub fn build_shared(contents: &Contents<'_>, dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    let root = dir.join("root");
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var",
        GUEST_DIR,
    ] {
        mkdir(&root.join(sub))?;
    }
    // `ip netns` keeps its namespaces under /var/run/netns.
    std::os::unix::fs::symlink("../run", root.join("var/run")).context("linking /var/run")?;
    write(&root.join("init"), INIT, 0o755)?;
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"))
        .context("busybox-static provides /bin/busybox: run `cargo xtask setup`")?;

    let guest = root.join(GUEST_DIR);
    strip_into(contents.integration, &guest.join("integration"))?;
    strip_into(contents.portmon, &guest.join("portmon"))?;
    write(
        &guest.join("harness-args"),
        &contents.harness_args.join("\n"),
        0o644,
    )?;

    // busybox too, should a dynamic one stand in for busybox-static.
    let mut dynamic = vec![
        root.join("bin/busybox"),
        guest.join("integration"),
        guest.join("portmon"),
    ];
    for program in PROGRAMS {
        let host = on_path(program)?;
        let into = root.join("usr/bin").join(program);
        copy(&host, &into)?;
        dynamic.push(into);
    }
    for library in libraries(&dynamic)? {
        copy(
            &library,
            &root.join(library.strip_prefix("/").unwrap_or(&library)),
        )?;
    }
    mkdir(&root.join(contents.tests_dir.strip_prefix("/").unwrap_or(contents.tests_dir)))?;
    for file in contents.same_path {
        copy(file, &root.join(file.strip_prefix("/").unwrap_or(file)))?;
    }
    // The daemon's registry source when no IANA file is configured.
    copy(Path::new("/etc/services"), &root.join("etc/services"))
        .context("the daemon reads /etc/services: run `apt-get install netbase`")?;
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(&root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    let archive = dir.with_extension("cpio");
    pack(&root, &archive)?;
    Ok(archive)
}

/// Packs a kernel's modules into `dir.cpio`, under the names `init.sh`
/// loads them by, in order.
pub fn build_modules(modules: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    let into = dir.join("root").join(GUEST_DIR).join("modules");
    mkdir(&into)?;
    for (i, module) in modules.iter().enumerate() {
        let name = module.file_name().context("a module file has a name")?;
        copy(module, &into.join(format!("{i}-{}", name.to_string_lossy())))?;
    }
    let archive = dir.with_extension("cpio");
    pack(&dir.join("root"), &archive)?;
    Ok(archive)
}

/// A copy without debug information: the guest needs the code and the
/// panic locations (compiled into the binary), not DWARF, and a smaller
/// archive boots faster.
fn strip_into(from: &Path, to: &Path) -> Result<()> {
    let mut strip = Command::new("strip");
    strip.arg("--strip-debug").arg("-o").arg(to).arg(from);
    shell::run(strip).context("strip comes with binutils: run `cargo xtask setup`")
}

fn on_path(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("the guests need {program}, which is not installed: run `cargo xtask setup`")
        })
}

/// The shared libraries and the dynamic loader these programs load, as
/// `ldd` lists them.
fn libraries(programs: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    for program in programs {
        let out = Command::new("ldd")
            .arg(program)
            .output()
            .context("running ldd (libc-bin)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // A static binary: ldd says so and fails.
        if !out.status.success() {
            continue;
        }
        for line in text.lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                found.insert(PathBuf::from(path));
            }
        }
    }
    if found.is_empty() {
        bail!("ldd found no shared library for {programs:?}: is libc-bin installed?");
    }
    Ok(found)
}

/// `cpio -o -H newc` of everything under `root`, paths relative to it, as
/// the kernel unpacks an initramfs.
fn pack(root: &Path, archive: &Path) -> Result<()> {
    let mut cpio = Command::new("sh");
    cpio.arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 > \"$0\"")
        .arg(archive)
        .current_dir(root);
    shell::run(cpio).context("packing the initramfs: cpio comes with `cargo xtask setup`")
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Copies the file `from` resolves to (libraries are often links).
fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
