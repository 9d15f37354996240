//! Installs what building and testing portmon need, when it is missing:
//! Debian packages (LLVM 22 for bpf-linker, Prometheus and promtool for the
//! exporter tests, iproute2's `ss`, lintian and man-db for the package
//! tests, nginx and wrk for the bench), the nightly pinned for the kernel
//! crate, `bpf-linker`, `cargo-deb`, the Kubernetes manifest validator (a
//! Python venv in the
//! target directory), and the tracefs and bpffs mounts; for the tests and
//! benches, IANA's full registry and the container tools (buildah, podman,
//! runc) the image's tests use.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{iana, shell};

/// Debian packages, each with a file that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("libpolly-22-dev", "/usr/lib/llvm-22/lib/libPolly.a"),
    ("prometheus", "/usr/bin/prometheus"),
    ("iproute2", "/usr/bin/ss"),
    ("util-linux", "/usr/bin/setpriv"),
    // `cargo xtask dist` and its test: strip, the library dependencies
    // (dpkg-shlibdeps), systemd-analyze, lintian, and man to render the page.
    ("binutils", "/usr/bin/strip"),
    ("dpkg-dev", "/usr/bin/dpkg-shlibdeps"),
    ("systemd", "/usr/bin/systemd-analyze"),
    ("lintian", "/usr/bin/lintian"),
    ("man-db", "/usr/bin/man"),
    // The unit's SystemCallFilter is checked against what the daemon calls.
    ("strace", "/usr/bin/strace"),
    // For the venv of the Kubernetes manifest validator.
    ("python3-venv", "/usr/lib/python3.11/ensurepip/__init__.py"),
    // `cargo xtask vm-test`: the guests, their init and their initramfs.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    // The overhead bench's realistic workload: a real HTTP server on
    // loopback under a load generator (the bench runs its own instance).
    ("nginx", "/usr/sbin/nginx"),
    ("wrk", "/usr/bin/wrk"),
];

/// What `cargo xtask image` and the image's tests need: buildah to build,
/// podman to run, and runc, since crun refuses hybrid cgroup hosts.
const CONTAINER_PACKAGES: &[(&str, &str)] = &[
    ("buildah", "/usr/bin/buildah"),
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
];

/// The bpf-linker release this project builds with, against LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-deb release `cargo xtask dist` builds the .deb with.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What building and running portmon need (`run`, `dist`).
pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_toolchain()?;
    ensure_bpf_linker()?;
    ensure_cargo_deb()?;
    ensure_k8s_validator()?;
    ensure_mounts()?;
    Ok(())
}

/// All of [`ensure`], and IANA's full registry for the tests and benches
/// (`setup`, `test`, `bench`); returns the registry's path. A registry that
/// can be neither found nor downloaded stops it before anything is
/// installed or built.
pub fn ensure_for_tests() -> Result<PathBuf> {
    let registry = iana::locate()?;
    ensure()?;
    ensure_container_tools()?;
    let path = iana::provide(registry)?;
    println!("xtask: the tests read IANA's registry at {}", path.display());
    Ok(path)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The container tools (`image`, and the tests that run the image).
pub fn ensure_container_tools() -> Result<()> {
    install_missing(CONTAINER_PACKAGES)
}

fn ensure_packages() -> Result<()> {
    install_missing(PACKAGES)
}

fn install_missing(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {}: run `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    shell::run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing);
    install.env("DEBIAN_FRONTEND", "noninteractive");
    shell::run(install)
}

/// The kernel crate's nightly, as `portmon-ebpf/rust-toolchain.toml` pins
/// it with its components: `rustup toolchain install` given no name
/// installs the directory's toolchain file (rustup 1.28+), adds what is
/// missing, and needs no network when nothing is. Its output is kept back:
/// a failure is told in one line.
fn ensure_toolchain() -> Result<()> {
    let mut install = shell::in_ebpf_crate("rustup");
    install.args(["toolchain", "install"]);
    let out = install.output().context("cannot run rustup: is it on PATH?")?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr.lines().find(|l| l.starts_with("error:")).map_or_else(
        || format!("{}", out.status),
        |l| l.trim_start_matches("error:").trim().to_owned(),
    );
    bail!(
        "cannot install the nightly pinned in portmon-ebpf/rust-toolchain.toml ({why}): with \
         network, run `rustup toolchain install` in portmon-ebpf/"
    )
}

fn ensure_bpf_linker() -> Result<()> {
    let version = shell::output("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let mut install = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path);
    shell::run(install)
}

/// Without its default features: the package is compressed by the system's
/// `xz` rather than a liblzma built from C, and no build id is read.
fn ensure_cargo_deb() -> Result<()> {
    let version = shell::output("cargo-deb", &["--version"]).unwrap_or_default();
    if version.split_whitespace().any(|word| word == CARGO_DEB_VERSION) {
        return Ok(());
    }
    shell::cargo(&[
        "install",
        "cargo-deb",
        "--locked",
        "--no-default-features",
        "--version",
        CARGO_DEB_VERSION,
    ])
}

/// The pinned Python packages the manifest test validates with, from
/// `tests/k8s/requirements.txt`, in a venv at `<target dir>/k8s-validate`
/// (where the test looks for it). Reinstalled when the pins change.
fn ensure_k8s_validator() -> Result<()> {
    let requirements = shell::workspace_root().join("tests/k8s/requirements.txt");
    let pins = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = shell::target_dir().join("k8s-validate");
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == pins) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&venv);
    // Debian's interpreter, whatever else is first on PATH.
    let mut create = Command::new("/usr/bin/python3");
    create.args(["-m", "venv"]).arg(&venv);
    shell::run(create).context("creating the validator's venv: is python3-venv installed?")?;
    let mut install = Command::new(venv.join("bin/pip"));
    install
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
        ])
        .arg(&requirements);
    shell::run(install).context("installing the manifest validator from PyPI")?;
    std::fs::write(&stamp, pins).with_context(|| format!("writing {}", stamp.display()))
}

/// tracefs for the tracepoint, bpffs for operators who pin; both are
/// missing on a fresh machine of this kind.
fn ensure_mounts() -> Result<()> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounted = |fs_type: &str| {
        mountinfo
            .lines()
            .any(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with(fs_type)))
    };
    for (fs_type, source, target) in [
        ("tracefs ", "nodev", "/sys/kernel/tracing"),
        ("bpf ", "bpffs", "/sys/fs/bpf"),
    ] {
        if mounted(fs_type) {
            continue;
        }
        if !is_root() {
            println!(
                "xtask: {} is not mounted; as root: mount -t {} {source} {target}",
                fs_type.trim(),
                fs_type.trim()
            );
            continue;
        }
        let mut mount = Command::new("mount");
        mount.args(["-t", fs_type.trim(), source, target]);
        shell::run(mount)?;
    }
    Ok(())
}
