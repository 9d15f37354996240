//! Network namespaces: the kernel programs name them by cookie
//! (`bpf_get_netns_cookie`); people know them as `host`, a name under
//! `/run/netns`, or an inode. This module maps one to the other and runs
//! work inside a namespace (reading its sysctls, listing its addresses).

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The cookie of the root network namespace.
pub const INIT_NET_COOKIE: u64 = 1;

/// The inode of the root network namespace: fixed at `PROC_NET_INIT_INO`
/// (include/linux/proc_ns.h), so it is known even where `/proc/1` is out
/// of reach.
const INIT_NET_INODE: u64 = 0xEFFF_FFF9;

/// `SO_NETNS_COOKIE` (include/uapi/asm-generic/socket.h), Linux 5.14+.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Cookie, as the kernel programs report it.
    pub cookie: u64,
    /// Inode of the namespace file (`ip netns identify`, `lsns`).
    pub inode: u64,
    /// A path that opens it (`/proc/PID/ns/net` or `/run/netns/NAME`).
    pub path: PathBuf,
    /// The name people know it by: `host`, the `/run/netns` name, or `net:[INODE]`.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the cookie of a network namespace (needs Linux 5.14)")]
    Cookie(#[source] io::Error),
    #[error("the thread working in network namespace {path} panicked")]
    Thread { path: PathBuf },
}

/// Runs `work` on a short-lived thread that has entered the namespace at
/// `path`; the rest of the process stays where it is (setns with
/// CLONE_NEWNET moves only the calling thread). Work in the caller's own
/// namespace skips setns, which needs CAP_SYS_ADMIN even there
/// (`netns_install`, net/core/net_namespace.c): without it portmon still
/// covers its own namespace.
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    if is_current(&file) {
        return Ok(work());
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; affects this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Enter {
                        path: path.to_owned(),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(work())
            })
            .join()
            .map_err(|_| NetnsError::Thread {
                path: path.to_owned(),
            })?
    })
}

/// Whether `file` is the calling thread's network namespace.
fn is_current(file: &File) -> bool {
    let Ok(own) = fs::metadata("/proc/thread-self/ns/net") else {
        return false;
    };
    file.metadata()
        .is_ok_and(|ns| ns.ino() == own.ino() && ns.dev() == own.dev())
}

/// Whether this process may enter other network namespaces (setns needs
/// CAP_SYS_ADMIN, `netns_install` in net/core/net_namespace.c).
pub fn can_enter_others() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> Result<u64, NetnsError> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetnsError::Cookie(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(NetnsError::Cookie(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// The cookie of the namespace at `path`.
pub fn cookie_of(path: &Path) -> Result<u64, NetnsError> {
    run_in(path, current_cookie)?
}

/// Every network namespace the host has a process or a `/run/netns` name in.
#[derive(Debug, Default)]
pub struct Namespaces {
    by_cookie: HashMap<u64, Netns>,
}

impl Namespaces {
    /// Scans `/proc/*/ns/net` and `/run/netns`.
    pub fn scan() -> Self {
        let mut found = Self::default();
        found.rescan();
        found
    }

    /// Scans again, keeping what is still there.
    pub fn rescan(&mut self) {
        let host_inode = fs::metadata("/proc/1/ns/net").map(|m| m.ino()).ok();
        let mut by_inode: HashMap<u64, (PathBuf, String)> = HashMap::new();
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(meta) = fs::metadata(&path) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    by_inode.entry(meta.ino()).or_insert((path, name));
                }
            }
        }
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if !entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                {
                    continue;
                }
                let path = entry.path().join("ns/net");
                if let Ok(meta) = fs::metadata(&path) {
                    by_inode.entry(meta.ino()).or_insert_with(|| {
                        let name = unit_of(&entry.path()).unwrap_or_else(|| format!("net:[{}]", meta.ino()));
                        (path, name)
                    });
                }
            }
        }
        // Two namespaces may come from one unit; a name stays unique.
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut by_inode: Vec<(u64, (PathBuf, String))> = by_inode.into_iter().collect();
        by_inode.sort_unstable_by_key(|(inode, _)| *inode);
        for (inode, (_, name)) in &mut by_inode {
            if *seen.entry(name.clone()).or_insert(*inode) != *inode {
                *name = format!("{name}/net:[{inode}]");
            }
        }
        let known: HashMap<u64, u64> = self.by_cookie.values().map(|n| (n.inode, n.cookie)).collect();
        let mut by_cookie = HashMap::with_capacity(by_inode.len());
        for (inode, (path, name)) in by_inode {
            let cookie = match known.get(&inode) {
                Some(&cookie) => cookie,
                None => match cookie_of(&path) {
                    Ok(cookie) => cookie,
                    Err(err) => {
                        tracing::debug!(path = %path.display(), "skipping namespace: {err}");
                        continue;
                    }
                },
            };
            // init_net is the first namespace the kernel makes, cookie 1
            // (net/core/net_namespace.c); /proc/1 may be out of reach.
            let name = if Some(inode) == host_inode || inode == INIT_NET_INODE || cookie == INIT_NET_COOKIE {
                "host".to_owned()
            } else {
                name
            };
            by_cookie.insert(
                cookie,
                Netns {
                    cookie,
                    inode,
                    path,
                    name,
                },
            );
        }
        self.by_cookie = by_cookie;
    }

    /// The namespace with this cookie, scanning again once if it is new.
    pub fn resolve(&mut self, cookie: u64) -> Option<&Netns> {
        if !self.by_cookie.contains_key(&cookie) {
            self.rescan();
        }
        self.by_cookie.get(&cookie)
    }

    /// The namespace with this cookie, as last scanned.
    pub fn get(&self, cookie: u64) -> Option<&Netns> {
        self.by_cookie.get(&cookie)
    }

    /// All namespaces, as last scanned.
    pub fn iter(&self) -> impl Iterator<Item = &Netns> {
        self.by_cookie.values()
    }
}

/// The container or systemd unit a process runs in, from its cgroup v2
/// path (`0::/system.slice/docker-<id>.scope` → `docker-<id12>`), or from
/// systemd's v1 hierarchy on hybrid hosts; `None` in the root cgroup.
fn unit_of(proc_pid: &Path) -> Option<String> {
    let text = fs::read_to_string(proc_pid.join("cgroup")).ok()?;
    let path_of = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .filter(|path| *path != "/")
    };
    let path = path_of("0::").or_else(|| {
        text.lines()
            .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
            .filter(|path| *path != "/")
    })?;
    unit_name(path)
}

/// The last component of a cgroup path, with a container id shortened to
/// the 12 characters `docker ps` shows.
fn unit_name(cgroup_path: &str) -> Option<String> {
    let last = cgroup_path.rsplit('/').find(|c| !c.is_empty())?;
    let hex_run = |from: usize| last[from..].bytes().take_while(u8::is_ascii_hexdigit).count();
    let id_start = (0..last.len())
        .find(|&i| (i == 0 || !last.as_bytes()[i - 1].is_ascii_hexdigit()) && hex_run(i) >= 64);
    Some(match id_start {
        Some(start) => {
            let prefix = &last[..start];
            format!("{prefix}{}", &last[start..start + 12])
        }
        None => last.to_owned(),
    })
}

/// The addresses configured in the calling thread's namespace.
pub fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let ifa = unsafe { &*cursor };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: family is AF_INET.
                    let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
                }
                libc::AF_INET6 => {
                    // SAFETY: family is AF_INET6.
                    let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
                }
                _ => {}
            }
        }
        cursor = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::unit_name;

    #[test]
    fn units_and_containers_are_named_as_people_know_them() {
        let id = "3f2a1b".repeat(10) + "abcd";
        assert_eq!(
            unit_name(&format!("/system.slice/docker-{id}.scope")).as_deref(),
            Some("docker-3f2a1b3f2a1b")
        );
        assert_eq!(
            unit_name(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            ))
            .as_deref(),
            Some("cri-containerd-3f2a1b3f2a1b")
        );
        assert_eq!(unit_name(&format!("/{id}")).as_deref(), Some("3f2a1b3f2a1b"));
        assert_eq!(
            unit_name("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(unit_name("/"), None);
    }
}
