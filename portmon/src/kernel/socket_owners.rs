//! Which process holds a socket, found as `ss -p` and `lsof` find it: by
//! the socket's inode among the links of `/proc/PID/fd` (`socket:[INODE]`).
//!
//! The kernel programs record the owner of the sockets they see bind or
//! listen; sockets made before portmon ran (sshd, a database) are found
//! here instead. Reading another user's `/proc/PID/fd` needs ptrace access
//! (`proc_fd_access_allowed`, fs/proc/base.c), so in the daemon the walk is
//! the namespace helper's, which holds `CAP_SYS_PTRACE`; the daemon asks
//! it by inode and gets plain numbers back
//! ([`netns_opener::find_socket_owners`](super::netns_opener::find_socket_owners)).
//! Without the helper the walk runs in the daemon and finds what it may
//! read (its user's processes).
//!
//! A walk costs one `readlink` per open descriptor of the host, so it is
//! bounded: by processes, by descriptors and by time, and a walk cut short
//! says so.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    time::{Duration, Instant},
};

/// Inodes one request may ask about (and so pairs one answer may carry).
pub const INODES_MAX: usize = 4096;
/// Processes one walk looks at before it stops.
pub const PROCESSES_MAX: u32 = 100_000;
/// Descriptors one walk reads before it stops.
pub const DESCRIPTORS_MAX: u32 = 2_000_000;
/// How long one walk may run: well under the helper's answer timeout.
pub const WALK_TIME_MAX: Duration = Duration::from_secs(2);

/// What one walk found, and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// The process holding each inode found (the lowest pid among those
    /// that share it: a forking server's parent).
    pub holders: HashMap<u32, u32>,
    /// Processes looked at.
    pub processes: u32,
    /// Descriptors read.
    pub descriptors: u32,
    /// Processes whose descriptors could not be read (another user's,
    /// without the privilege; or gone during the walk).
    pub unreadable: u32,
    /// Whether a bound stopped the walk before every process was seen.
    pub cut_short: bool,
}

/// Walks `/proc/*/fd` for the sockets `inodes`, within the bounds above.
pub fn walk(inodes: &[u32]) -> Walk {
    let wanted: HashSet<u32> = inodes.iter().copied().collect();
    let mut found = Walk::default();
    if wanted.is_empty() {
        return found;
    }
    let started = Instant::now();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return found;
    };
    // /proc lists processes by ascending pid, so the first holder found is
    // the lowest pid.
    'processes: for entry in proc.flatten() {
        let Some(pid) = pid_of(&entry.file_name()) else {
            continue;
        };
        if found.processes >= PROCESSES_MAX
            || found.descriptors >= DESCRIPTORS_MAX
            || started.elapsed() >= WALK_TIME_MAX
        {
            found.cut_short = true;
            break;
        }
        found.processes += 1;
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            found.unreadable += 1;
            continue;
        };
        for fd in fds.flatten() {
            if found.descriptors >= DESCRIPTORS_MAX
                || (found.descriptors.is_multiple_of(4096) && started.elapsed() >= WALK_TIME_MAX)
            {
                found.cut_short = true;
                break 'processes;
            }
            found.descriptors += 1;
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(target.as_os_str()) {
                if wanted.contains(&inode) {
                    found.holders.entry(inode).or_insert(pid);
                }
            }
        }
        if found.holders.len() == wanted.len() {
            break;
        }
    }
    found
}

fn pid_of(name: &OsStr) -> Option<u32> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The inode of a descriptor's link text `socket:[INODE]`
/// (`sockfs_dname`, net/socket.c).
fn socket_inode(link: &OsStr) -> Option<u32> {
    let digits = link.as_bytes().strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn link_texts() {
        let cases: &[(&str, Option<u32>)] = &[
            ("socket:[12345]", Some(12345)),
            ("socket:[4294967295]", Some(u32::MAX)),
            ("socket:[4294967296]", None),
            ("socket:[]", None),
            ("socket:[12", None),
            ("pipe:[12]", None),
            ("/dev/null", None),
        ];
        for (text, want) in cases {
            assert_eq!(socket_inode(OsStr::new(text)), *want, "{text}");
        }
        assert_eq!(pid_of(OsStr::new("42")), Some(42));
        assert_eq!(pid_of(OsStr::new("self")), None);
        assert_eq!(pid_of(OsStr::new("")), None);
    }

    #[test]
    fn a_socket_of_this_process_is_found_here() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .expect("the socket's inode")
        .ino() as u32;
        let found = walk(&[inode, 1]);
        assert_eq!(found.holders.get(&inode), Some(&std::process::id()), "{found:?}");
        assert!(found.processes >= 1 && found.descriptors >= 1, "{found:?}");
        assert!(!found.cut_short);
        assert_eq!(walk(&[]), Walk::default(), "nothing asked, nothing walked");
    }
}
