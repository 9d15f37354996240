//! Giving up capabilities: once the programs are attached, the links, maps
//! and listening socket are file descriptors the process already holds, and
//! using them needs no privilege, so the daemon keeps none. CAP_SYS_ADMIN
//! (setns) and CAP_SYS_PTRACE (other users' `/proc/PID/ns/net`) go to the
//! namespace helper before anything is loaded
//! ([`netns_opener`](super::netns_opener)), which keeps only those.

use std::io;

/// Capability numbers (include/uapi/linux/capability.h).
pub const CAP_SYS_PTRACE: u32 = 19;
/// See [`CAP_SYS_PTRACE`].
pub const CAP_SYS_ADMIN: u32 = 21;

/// What the namespace helper keeps, if held: setns, and opening the
/// namespace of a process of another user or with more capabilities.
pub const NAMESPACE_HELPER: u64 = (1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE);

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error(
        "cannot drop capabilities: {threads} threads run, and capset(2) changes only the \
         calling one (drop them before starting threads)"
    )]
    Threads { threads: usize },
    #[error("cannot read this process's capabilities")]
    Get(#[source] io::Error),
    #[error("cannot drop capabilities")]
    Set(#[source] io::Error),
}

/// Capabilities before and after a drop, as bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The permitted set before.
    pub before: u64,
    /// The permitted set after.
    pub after: u64,
}

/// Drops every capability from the effective, permitted, inheritable and
/// ambient sets. Must run while the process has one thread: capabilities
/// belong to threads.
pub fn drop_after_attach() -> Result<Dropped, CapabilityError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads != 1 {
        return Err(CapabilityError::Threads { threads });
    }
    keep_only(0)
}

/// The permitted set, as a mask.
pub fn permitted() -> Result<u64, CapabilityError> {
    let (_, data) = get()?;
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Gives up the capabilities in `mask` (the calling thread's).
pub fn give_up(mask: u64) -> Result<Dropped, CapabilityError> {
    keep_only(permitted()? & !mask)
}

fn get() -> Result<(Header, [Data; 2]), CapabilityError> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and two data words, as capget(2) expects.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(CapabilityError::Get(io::Error::last_os_error()));
    }
    Ok((header, data))
}

/// Keeps only the capabilities in `keep` (of those held) in the calling
/// thread's effective and permitted sets; clears the inheritable and
/// ambient ones.
pub fn keep_only(keep: u64) -> Result<Dropped, CapabilityError> {
    let (mut header, mut data) = get()?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    let before = join(data[0].permitted, data[1].permitted);
    let after = before & keep;
    let effective = join(data[0].effective, data[1].effective) & keep;
    let split = |mask: u64| [mask as u32, (mask >> 32) as u32];
    let (p, e) = (split(after), split(effective));
    for (word, d) in data.iter_mut().enumerate() {
        *d = Data {
            effective: e[word],
            permitted: p[word],
            inheritable: 0,
        };
    }
    // SAFETY: a version-3 header and two data words, as capset(2)
    // expects; lowering sets never needs a privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(CapabilityError::Set(io::Error::last_os_error()));
    }
    // The kernel lowers the ambient set with the inheritable one
    // (cap_capset, security/commoncap.c); clearing it says so plainly.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    Ok(Dropped { before, after })
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Names of the capabilities in a mask, for logs (`CAP_BPF CAP_NET_ADMIN`).
pub fn names(mask: u64) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0, "CAP_CHOWN"),
        (1, "CAP_DAC_OVERRIDE"),
        (2, "CAP_DAC_READ_SEARCH"),
        (3, "CAP_FOWNER"),
        (5, "CAP_KILL"),
        (6, "CAP_SETGID"),
        (7, "CAP_SETUID"),
        (8, "CAP_SETPCAP"),
        (10, "CAP_NET_BIND_SERVICE"),
        (12, "CAP_NET_ADMIN"),
        (13, "CAP_NET_RAW"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (24, "CAP_SYS_RESOURCE"),
        (38, "CAP_PERFMON"),
        (39, "CAP_BPF"),
    ];
    let mut out: Vec<String> = Vec::new();
    let mut rest = mask;
    for &(bit, name) in NAMES {
        if mask & (1 << bit) != 0 {
            out.push(name.to_owned());
            rest &= !(1 << bit);
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    if out.is_empty() {
        "none".to_owned()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_masks() {
        let cases: &[(u64, &str)] = &[
            (0, "none"),
            ((1 << 39) | (1 << 12), "CAP_NET_ADMIN CAP_BPF"),
            (1 << 21, "CAP_SYS_ADMIN"),
            ((1 << 38) | (1 << 4), "CAP_PERFMON 0x10"),
        ];
        for &(mask, want) in cases {
            assert_eq!(names(mask), want, "{mask:#x}");
        }
    }

    #[test]
    fn refuses_with_threads_running() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let outcome = drop_after_attach();
        drop(tx);
        let _ = other.join();
        assert!(
            matches!(outcome, Err(CapabilityError::Threads { threads }) if threads >= 2),
            "{outcome:?}"
        );
    }
}
