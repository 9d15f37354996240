//! `cargo xtask dist`: the release binary, the systemd unit, the default
//! configuration, the Grafana dashboard and the alert rules, as a Debian
//! package (staged tree + `dpkg-deb --build`) and a tarball, in
//! `<target dir>/dist/`.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{setup, shell};

/// Version of every crate in the workspace, and so of the package.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One file shipped: where it comes from in the repository, where it goes
/// in the installed tree and in the tarball, its mode, and whether a
/// missing source is an error (the dashboard and rules come from another
/// branch until it is merged).
struct Shipped {
    source: &'static str,
    installed: &'static str,
    tarball: &'static str,
    mode: u32,
    required: bool,
}

const SHIPPED: &[Shipped] = &[
    Shipped {
        source: "deploy/systemd/portmon.service",
        installed: "lib/systemd/system/portmon.service",
        tarball: "portmon.service",
        mode: 0o644,
        required: true,
    },
    Shipped {
        source: "deploy/portmon.toml",
        installed: "etc/portmon/portmon.toml",
        tarball: "portmon.toml",
        mode: 0o644,
        required: true,
    },
    Shipped {
        source: "deploy/grafana/portmon.json",
        installed: "usr/share/portmon/grafana/portmon.json",
        tarball: "grafana/portmon.json",
        mode: 0o644,
        required: false,
    },
    Shipped {
        source: "deploy/prometheus/portmon.rules.yml",
        installed: "usr/share/portmon/prometheus/portmon.rules.yml",
        tarball: "prometheus/portmon.rules.yml",
        mode: 0o644,
        required: false,
    },
    Shipped {
        source: "README.md",
        installed: "usr/share/doc/portmon/README.md",
        tarball: "README.md",
        mode: 0o644,
        required: true,
    },
];

/// Builds both artifacts and prints their paths.
pub fn run() -> Result<()> {
    setup::ensure()?;
    shell::cargo(&["build", "--release", "--locked", "--package", "portmon"])?;
    let root = shell::workspace_root();
    let target = shell::target_dir();
    let binary = target.join("release/portmon");
    let dist = target.join("dist");
    let arch = shell::output("dpkg", &["--print-architecture"])
        .map(|a| a.trim().to_owned())
        .context("dpkg --print-architecture failed: is this a Debian system?")?;

    let name = format!("portmon_{VERSION}_{arch}");
    let stage = dist.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let tar_name = format!("portmon-{VERSION}-{arch}");
    let tar_stage = dist.join(&tar_name);
    if tar_stage.exists() {
        fs::remove_dir_all(&tar_stage).with_context(|| format!("removing {}", tar_stage.display()))?;
    }

    let stripped = dist.join("portmon.stripped");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let mut strip = Command::new("strip");
    strip.arg("--strip-debug").arg("-o").arg(&stripped).arg(&binary);
    shell::run(strip)?;
    place(&stripped, &stage.join("usr/bin/portmon"), 0o755)?;
    place(&stripped, &tar_stage.join("portmon"), 0o755)?;
    for file in SHIPPED {
        let source = root.join(file.source);
        if !source.exists() {
            if file.required {
                bail!("{} is missing", file.source);
            }
            println!("xtask: {} is not on this branch yet; not shipped", file.source);
            continue;
        }
        place(&source, &stage.join(file.installed), file.mode)?;
        place(&source, &tar_stage.join(file.tarball), file.mode)?;
    }
    write_debian_dir(&root, &stage, &arch)?;

    let deb = dist.join(format!("{name}.deb"));
    let mut build = Command::new("dpkg-deb");
    build
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb);
    shell::run(build)?;
    let tarball = dist.join(format!("{tar_name}.tar.gz"));
    let mut tar = Command::new("tar");
    tar.arg("-czf")
        .arg(&tarball)
        .args(["--owner=0", "--group=0", "--sort=name", "-C"])
        .arg(&dist)
        .arg(&tar_name);
    shell::run(tar)?;
    for artifact in [&deb, &tarball] {
        let size = fs::metadata(artifact).map(|m| m.len()).unwrap_or(0);
        println!("xtask: built {} ({size} bytes)", artifact.display());
    }
    Ok(())
}

fn place(source: &Path, dest: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(source, dest).with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))
}

/// DEBIAN/: control (version, architecture and size filled in), conffiles,
/// and the maintainer scripts from `deploy/debian/`.
fn write_debian_dir(root: &Path, stage: &Path, arch: &str) -> Result<()> {
    let templates = root.join("deploy/debian");
    let debian = stage.join("DEBIAN");
    let installed_kib = tree_size(stage)?.div_ceil(1024);
    let control = fs::read_to_string(templates.join("control"))
        .context("reading deploy/debian/control")?
        .replace("@VERSION@", VERSION)
        .replace("@ARCH@", arch)
        .replace("@INSTALLED_SIZE@", &installed_kib.to_string());
    fs::create_dir_all(&debian).with_context(|| format!("creating {}", debian.display()))?;
    fs::write(debian.join("control"), control).context("writing DEBIAN/control")?;
    // dpkg keeps an operator's edits to these across upgrades.
    fs::write(debian.join("conffiles"), "/etc/portmon/portmon.toml\n").context("writing DEBIAN/conffiles")?;
    for script in ["postinst", "prerm", "postrm"] {
        place(&templates.join(script), &debian.join(script), 0o755)?;
    }
    Ok(())
}

fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
