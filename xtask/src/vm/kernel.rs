//! Debian's cloud kernels for the guests: a version asked for is resolved to
//! a package through apt, downloaded with `apt-get download` and unpacked,
//! keeping only the kernel image, the sock_diag modules and SCTP's, under
//! `<target dir>/vm/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::shell;

/// What the default run boots: Debian 12's kernel and bookworm-security's
/// 6.12, the two that Debian 12 fleets run. The host's own kernel is tested
/// by the host run of `cargo xtask test`.
pub const DEFAULT: &[&str] = &["6.1", "6.12"];

/// The sock_diag modules, in the order `insmod` needs them: tcp_diag and
/// udp_diag both use inet_diag's symbols. Debian's cloud kernels build them
/// as modules, and a guest without modprobe's autoloading (the kernel asks
/// for `net-pf-16-proto-4-type-2`) would get `ENOENT` from every dump.
const DIAG_MODULES: &[(&str, &str)] = &[
    ("inet_diag", "CONFIG_INET_DIAG"),
    ("tcp_diag", "CONFIG_INET_TCP_DIAG"),
    ("udp_diag", "CONFIG_INET_UDP_DIAG"),
];

/// SCTP and what it needs, in load order, under the modules' `kernel/`:
/// for the test that SCTP's sockets, which move through TCP's states, are
/// not taken for TCP's. Loaded when the package ships them; a kernel with
/// SCTP built in, or without it, boots all the same (the test then says
/// what it found).
const SCTP_MODULES: &[&str] = &[
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "lib/libcrc32c",
    "net/sctp/sctp",
];

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    /// The Debian package, e.g. `linux-image-6.1.0-57-cloud-amd64`.
    pub package: String,
    /// Its release (`uname -r`), e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The sock_diag modules the kernel does not build in, then SCTP's,
    /// uncompressed, in load order.
    pub modules: Vec<PathBuf>,
}

/// Resolves, downloads (once) and unpacks the kernel `spec` names: `6.1` or
/// `6.12` (through Debian's metapackages), an ABI version (`6.1.0-50`,
/// `6.12.100`), or a package name (`linux-image-…`).
pub fn provide(spec: &str, cache: &Path) -> Result<Kernel> {
    let package = resolve(spec)?;
    let release = package
        .strip_prefix("linux-image-")
        .context("a kernel package's name starts with linux-image-")?
        .to_owned();
    let deb = download(&package, &cache.join("debs"))?;
    let dir = cache.join("kernels").join(&release);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    let modules_dir = dir.join(format!("lib/modules/{release}/kernel/net/ipv4"));
    if !vmlinuz.exists() {
        unpack(&deb, &dir, &release)?;
    }
    ensure!(
        vmlinuz.exists(),
        "{} holds no boot/vmlinuz-{release}: delete it and run again",
        deb.display()
    );
    let config_path = dir.join(format!("boot/config-{release}"));
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}: delete it and run again", dir.display()))?;
    let mut modules = Vec::new();
    for (name, option) in DIAG_MODULES {
        if config.lines().any(|l| l == format!("{option}=y")) {
            continue;
        }
        ensure!(
            config.lines().any(|l| l == format!("{option}=m")),
            "{release} has no {option}: portmon's inventory needs sock_diag, pick another kernel"
        );
        modules.push(uncompressed(&modules_dir, name)?);
    }
    let kernel_dir = dir.join(format!("lib/modules/{release}/kernel"));
    let shipped = |path: &str| {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        ["ko", "ko.xz", "ko.zst"]
            .iter()
            .any(|ext| kernel_dir.join(dir).join(format!("{name}.{ext}")).exists())
    };
    if !SCTP_MODULES.iter().all(|m| shipped(m)) {
        // A cache unpacked before these were kept, or a package without
        // them: one more look costs a second.
        unpack_sctp(&deb, &dir, &release);
    }
    if SCTP_MODULES.iter().all(|m| shipped(m)) {
        for path in SCTP_MODULES {
            let (sub, name) = path.rsplit_once('/').unwrap_or(("", path));
            modules.push(uncompressed(&kernel_dir.join(sub), name)?);
        }
    }
    Ok(Kernel {
        package,
        release,
        vmlinuz,
        modules,
    })
}

/// The package name for a version as the user wrote it.
fn resolve(spec: &str) -> Result<String> {
    if spec.starts_with("linux-image-") {
        return known(spec.to_owned());
    }
    let parts: Vec<&str> = spec.split('.').collect();
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        // A major.minor: the metapackage that follows it.
        [major, minor] if is_number(major) && is_number(minor) => {
            let named = format!("linux-image-{spec}-cloud-amd64");
            let metapackage = if apt_knows(&named) {
                named
            } else {
                // Debian's own release kernel has no version in its name.
                "linux-image-cloud-amd64".to_owned()
            };
            let package = depends_on(&metapackage)?;
            ensure!(
                package.starts_with(&format!("linux-image-{spec}.")),
                "no cloud kernel {spec} in apt's lists ({metapackage} is {package}): give an \
                 exact version, `apt-cache search linux-image-.*-cloud-amd64` lists them"
            );
            Ok(package)
        }
        // 6.1.0-50 is bookworm's ABI name; 6.12.100 is bookworm-security's
        // backport, named with +deb12.
        _ if spec.contains('-') => known(format!("linux-image-{spec}-cloud-amd64")),
        _ => known(format!("linux-image-{spec}+deb12-cloud-amd64")),
    }
}

fn known(package: String) -> Result<String> {
    ensure!(
        apt_knows(&package),
        "apt knows no package {package}: run `apt-get update`; \
         `apt-cache search linux-image-.*-cloud-amd64` lists the kernels it knows"
    );
    Ok(package)
}

fn apt_knows(package: &str) -> bool {
    shell::output("apt-cache", &["show", "--no-all-versions", package])
        .is_some_and(|out| out.contains("Package:"))
}

/// The kernel image a metapackage depends on.
fn depends_on(metapackage: &str) -> Result<String> {
    let out = shell::output("apt-cache", &["depends", metapackage]).with_context(|| {
        format!("apt-cache depends {metapackage} failed: run `apt-get update` and try again")
    })?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| format!("{metapackage} depends on no linux-image package"))
}

/// The package's .deb in `dir`, downloaded when missing.
fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let find = || -> Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        Ok(std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            }))
    };
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    let mut get = Command::new("apt-get");
    get.args(["download", "-q", package]).current_dir(dir);
    shell::run(get).with_context(|| {
        format!("downloading {package}: run `apt-get update`, and check that apt reaches Debian")
    })?;
    find()?.with_context(|| format!("apt-get download left no {package}_*.deb in {}", dir.display()))
}

/// Unpacks the kernel image and the sock_diag modules of `deb` into `dir`.
fn unpack(deb: &Path, dir: &Path, release: &str) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let modules = format!("./lib/modules/{release}/kernel/net/ipv4");
    let mut wanted = vec![
        format!("./boot/vmlinuz-{release}"),
        format!("./boot/config-{release}"),
    ];
    wanted.extend(DIAG_MODULES.iter().map(|(m, _)| format!("{modules}/{m}.ko*")));
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$0\" | tar -x -C \"$1\" --wildcards {}",
        wanted
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut extract = Command::new("sh");
    extract.arg("-c").arg(script).arg(deb).arg(dir);
    shell::run(extract).with_context(|| {
        format!(
            "unpacking {}: delete it (it may be cut short) and run again",
            deb.display()
        )
    })
}

/// Unpacks SCTP's modules of `deb` into `dir`, if the package has them.
fn unpack_sctp(deb: &Path, dir: &Path, release: &str) {
    let wanted: Vec<String> = SCTP_MODULES
        .iter()
        .map(|m| format!("'./lib/modules/{release}/kernel/{m}.ko*'"))
        .collect();
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$0\" | tar -x -C \"$1\" --wildcards {} 2>/dev/null",
        wanted.join(" ")
    );
    let mut extract = Command::new("sh");
    extract.arg("-c").arg(script).arg(deb).arg(dir);
    // tar fails when one is missing: then SCTP is simply not loaded.
    let _ = extract.status();
}

/// `dir/name.ko`, decompressed from `.ko.xz` or `.ko.zst` if that is what
/// the package ships: busybox's insmod loads plain ELF only.
fn uncompressed(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(format!("{name}.ko"));
    if plain.exists() {
        return Ok(plain);
    }
    for (ext, tool) in [("xz", "xz"), ("zst", "zstd")] {
        let packed = dir.join(format!("{name}.ko.{ext}"));
        if packed.exists() {
            let mut decompress = Command::new(tool);
            decompress.args(["-d", "-q", "-k", "-f"]).arg(&packed);
            shell::run(decompress)
                .with_context(|| format!("decompressing {}: is {tool} installed?", packed.display()))?;
            return Ok(plain);
        }
    }
    bail!(
        "{} has no {name}.ko, .ko.xz or .ko.zst: delete {} and run again",
        dir.display(),
        dir.display()
    )
}
