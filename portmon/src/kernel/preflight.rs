//! What must hold before the kernel programs can load: privileges, kernel
//! version, the kernel's BTF, and a cgroup v2 mount. Each failure is one line that says what
//! to do. (tracefs is not needed: the one tracepoint is a raw one.)

use std::{io, path::PathBuf};

use super::{bpf::btf::VMLINUX, mounts::Mounts, procfs};

/// Capability numbers (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Oldest kernel with everything portmon uses: BPF ring buffer (5.8), cgroup
/// bpf links (5.7), netns cookies in cgroup sock programs (5.8), and the
/// atomic compare-and-exchange that claims a socket slot (5.12).
pub const MIN_KERNEL: (u32, u32) = (5, 12);

/// What the preflight found, for the loader.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Root of the cgroup v2 hierarchy, where cgroup programs attach.
    pub cgroup_root: PathBuf,
    /// True when that mount is a subtree (a container's cgroup namespace):
    /// only sockets of processes below it are seen.
    pub cgroup_is_subtree: bool,
    /// Kernel release, e.g. `6.18.44`.
    pub kernel_release: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing capabilities {missing}: run portmon as root, or grant them \
         (systemd: AmbientCapabilities={missing})"
    )]
    Capabilities { missing: String },
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "no cgroup v2 hierarchy is mounted: mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("{} is missing: portmon needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are)", VMLINUX)]
    NoBtf,
    #[error("kernel {found} is too old: portmon needs Linux {}.{} or later", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { found: String },
}

/// Runs every check.
pub fn check() -> Result<Environment, PreflightError> {
    check_capabilities()?;
    let kernel_release = kernel_release()?;
    if parse_release(&kernel_release) < MIN_KERNEL {
        return Err(PreflightError::KernelTooOld {
            found: kernel_release,
        });
    }
    if !std::path::Path::new(VMLINUX).exists() {
        return Err(PreflightError::NoBtf);
    }
    let read_mounts = || {
        Mounts::read().map_err(|source| PreflightError::Read {
            path: "/proc/self/mountinfo",
            source,
        })
    };
    let mounts = read_mounts()?;
    let cgroup = mounts.cgroup2().ok_or(PreflightError::NoCgroup2)?;
    let (cgroup_root, cgroup_is_subtree) = (
        cgroup.mount_point.clone(),
        cgroup.root != std::path::Path::new("/"),
    );
    Ok(Environment {
        cgroup_root,
        cgroup_is_subtree,
        kernel_release,
    })
}

/// The effective capability set, as a bit mask.
fn effective_capabilities() -> Result<u64, PreflightError> {
    procfs::effective_capabilities("self").map_err(|err| PreflightError::Read {
        path: "/proc/self/status",
        source: err.source,
    })
}

/// The capabilities portmon lacks, by name; empty when it has them all.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON
    // (bpf_capable/perfmon_capable, include/linux/capability.h).
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

fn check_capabilities() -> Result<(), PreflightError> {
    let missing = missing_capabilities(effective_capabilities()?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Capabilities {
            missing: missing.join(" "),
        })
    }
}

fn kernel_release() -> Result<String, PreflightError> {
    procfs::read("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .map_err(|err| PreflightError::Read {
            path: "/proc/sys/kernel/osrelease",
            source: err.source,
        })
}

/// `6.18.44-foo` → (6, 18).
fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let bit = |c: u32| 1u64 << c;
        let cases: &[(u64, &[&str])] = &[
            (u64::MAX, &[]),
            (0, &["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]),
            (bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_NET_ADMIN), &[]),
            (bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN), &[]),
            (bit(CAP_BPF) | bit(CAP_NET_ADMIN), &["CAP_PERFMON"]),
        ];
        for (mask, want) in cases {
            assert_eq!(missing_capabilities(*mask), *want, "mask {mask:#x}");
        }
    }

    #[test]
    fn releases() {
        for (s, want) in [
            ("6.18.44-fc-v669", (6, 18)),
            ("5.4.0", (5, 4)),
            ("garbage", (0, 0)),
            ("", (0, 0)),
        ] {
            assert_eq!(parse_release(s), want, "{s}");
        }
    }
}
