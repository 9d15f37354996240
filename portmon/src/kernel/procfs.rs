//! The one reader of procfs and sysctl files.
//!
//! A file under `/proc/sys/net` or `/proc/thread-self/net` shows the network
//! namespace of the thread that opened it (its `ctl_table` or `seq_file`
//! points into that `struct net`), so a [`ProcFile`] opened inside a
//! namespace reads that namespace from any thread afterwards: no `setns`
//! per read, and no privilege needed after start. Such files answer each
//! read from the offset given, so one open serves every read.
//!
//! `ProcFile` is for files the kernel writes whole at each read from 0: a
//! sysctl (`proc_sys_call_handler` formats the value into the caller's
//! buffer) or a one-record `seq_file` (sockstat). A read shorter than asked
//! is then the end, which saves the second system call per file that
//! reading up to an empty read costs at every scrape of every namespace.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

/// Directory holding the calling thread's namespace's IPv4 sysctls.
pub const PROC_SYS_NET_IPV4: &str = "/proc/sys/net/ipv4";

/// `CAP_NET_BIND_SERVICE` (include/uapi/linux/capability.h).
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// `CAP_SYS_ADMIN` (include/uapi/linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;

/// A sysctl or one-record procfs file, opened once and read whole at each
/// [`read`](Self::read).
#[derive(Debug)]
pub struct ProcFile {
    file: File,
    path: PathBuf,
}

/// A procfs file that could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct ProcError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl ProcFile {
    /// Opens `path` in the calling thread's namespaces.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ProcError> {
        let path = path.into();
        match File::open(&path) {
            Ok(file) => Ok(Self { file, path }),
            Err(source) => Err(ProcError { path, source }),
        }
    }

    /// A file opened elsewhere (in another namespace, by the namespace
    /// helper); `path` is where it was, for messages.
    pub fn from_fd(fd: std::os::fd::OwnedFd, path: impl Into<PathBuf>) -> Self {
        Self {
            file: File::from(fd),
            path: path.into(),
        }
    }

    /// The path it was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's whole content as of now.
    pub fn read(&self) -> Result<String, ProcError> {
        let mut content = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self
                .file
                .read_at(&mut chunk, content.len() as u64)
                .map_err(|source| self.error(source))?;
            content.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
        String::from_utf8(content).map_err(|e| self.error(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    fn error(&self, source: io::Error) -> ProcError {
        ProcError {
            path: self.path.clone(),
            source,
        }
    }
}

/// This process's open file descriptors and its soft `RLIMIT_NOFILE`.
pub fn descriptors() -> io::Result<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((open, limit.rlim_cur))
}

/// A whole file read once (`/proc/PID/status`, a sysctl).
pub fn read(path: impl Into<PathBuf>) -> Result<String, ProcError> {
    ProcFile::open(path)?.read()
}

/// A whole file read once, as bytes: for files whose text is anyone's
/// (`/proc/PID/cgroup` holds cgroup names, which may be any bytes).
pub fn read_bytes(path: impl Into<PathBuf>) -> Result<Vec<u8>, ProcError> {
    let path = path.into();
    std::fs::read(&path).map_err(|source| ProcError { path, source })
}

/// A numeric sysctl of the calling thread's namespace (`net/ipv4/ip_unprivileged_port_start`).
pub fn sysctl_u32(name: &str) -> Option<u32> {
    read(format!("/proc/sys/{name}")).ok()?.trim().parse().ok()
}

/// The effective capabilities of process `pid` (`self` for this one), as a
/// mask (`CapEff:` of its status; none when the line is missing).
pub fn effective_capabilities(pid: &str) -> Result<u64, ProcError> {
    let status = read(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0))
}

/// A process's command name as the kernel keeps it (`/proc/PID/comm`, 15
/// bytes at most), NUL padded; all zero if the process is gone.
pub fn command_of(pid: u32) -> [u8; 16] {
    let mut comm = [0; 16];
    if let Ok(text) = std::fs::read(format!("/proc/{pid}/comm")) {
        let name = text.strip_suffix(b"\n").unwrap_or(&text);
        let len = name.len().min(15);
        comm[..len].copy_from_slice(&name[..len]);
    }
    comm
}

/// A NUL-padded command name as text.
pub fn comm_text(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_open_serves_every_read() {
        let file = ProcFile::open(Path::new(PROC_SYS_NET_IPV4).join("ip_local_port_range")).expect("procfs");
        let first = file.read().expect("first read");
        assert_eq!(file.read().expect("a read from the start again"), first);
        assert!(ProcFile::open("/proc/sys/net/ipv4/no_such_file")
            .unwrap_err()
            .path
            .ends_with("no_such_file"));
    }

    #[test]
    fn a_file_longer_than_one_read_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("portmon-procfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0, 4095, 4096, 4097, 9000] {
            let path = dir.join(format!("f{len}"));
            let text: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            std::fs::write(&path, &text).unwrap();
            assert_eq!(
                ProcFile::open(&path).unwrap().read().unwrap(),
                text,
                "{len} bytes"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commands_are_text_up_to_the_first_nul() {
        assert_eq!(comm_text(b"nginx\0\0\0\0\0\0\0\0\0\0\0"), "nginx");
        assert_eq!(comm_text(&[b'a'; 16]), "a".repeat(16));
        assert!(!comm_text(&command_of(std::process::id())).is_empty());
        assert_eq!(command_of(u32::MAX), [0; 16]);
    }
}
