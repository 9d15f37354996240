//! Network namespaces as the kernel offers them: entering one for a piece
//! of work (`setns` on a thread of its own), opening portmon's files in one
//! (in-process, or through the namespace helper when the process may not
//! enter namespaces itself), its cookie (the number the kernel programs
//! report, `bpf_get_netns_cookie`), and its addresses.

use super::{
    netns_opener::{self, Opened, OpenerError, Target, Wanted},
    procfs, threads,
};
use std::{
    fs::{self, File},
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The cookie of the root network namespace.
pub const INIT_NET_COOKIE: u64 = 1;

/// The inode of the root network namespace: fixed at `PROC_NET_INIT_INO`
/// (include/linux/proc_ns.h), so it is known even where `/proc/1` is out
/// of reach.
pub const INIT_NET_INODE: u64 = 0xEFFF_FFF9;

/// `SO_NETNS_COOKIE` (include/uapi/asm-generic/socket.h), Linux 5.14+.
const SO_NETNS_COOKIE: libc::c_int = 71;

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
    #[error("the OS refused a thread to enter network namespace {path}")]
    NoThread { path: PathBuf },
    #[error("the thread working in network namespace {path} panicked")]
    Thread { path: PathBuf },
    #[error("cannot open files in network namespace {path}")]
    Helper {
        path: PathBuf,
        #[source]
        source: OpenerError,
    },
    #[error("network namespace {path} opened no {what}")]
    Missing { path: PathBuf, what: &'static str },
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
        let thread = threads::spawn_scoped(scope, "portmon-netns", || {
            // SAFETY: a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter {
                    path: path.to_owned(),
                    source: io::Error::last_os_error(),
                });
            }
            Ok(work())
        })
        .ok_or_else(|| NetnsError::NoThread {
            path: path.to_owned(),
        })?;
        thread.join().map_err(|_| NetnsError::Thread {
            path: path.to_owned(),
        })?
    })
}

/// Opens `wanted` inside the namespace at `path`: in-process when it is
/// the caller's own namespace or when there is no helper, through the
/// namespace helper otherwise.
pub fn open_in(path: &Path, wanted: Wanted) -> Result<Opened, NetnsError> {
    let local = File::open(path);
    let own = local.as_ref().is_ok_and(is_current);
    if !own {
        if let (Some(helper), Some(target)) = (netns_opener::helper(), Target::of_path(path)) {
            return helper.open(&target, wanted).map_err(|source| NetnsError::Helper {
                path: path.to_owned(),
                source,
            });
        }
    }
    let file = local.map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let inode = file
        .metadata()
        .map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?
        .ino();
    let mut opened = if wanted.is_empty() {
        Opened::default()
    } else if own {
        netns_opener::open_here(wanted)
    } else {
        run_in(path, || netns_opener::open_here(wanted))?
    };
    opened.inode = inode;
    Ok(opened)
}

/// The inode of the namespace at `path`; through the helper when this
/// process may not look (another user's process, or one with more
/// capabilities: `proc_ns_get_link` asks for ptrace access).
pub fn inode_of(path: &Path) -> io::Result<u64> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.ino()),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            match (netns_opener::helper(), Target::of_path(path)) {
                (Some(helper), Some(target)) => helper
                    .open(&target, Wanted::NONE)
                    .map(|opened| opened.inode)
                    .map_err(|_| err),
                _ => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

/// Whether `file` is the calling thread's network namespace.
fn is_current(file: &File) -> bool {
    let Ok(own) = fs::metadata("/proc/thread-self/ns/net") else {
        return false;
    };
    file.metadata()
        .is_ok_and(|ns| ns.ino() == own.ino() && ns.dev() == own.dev())
}

/// Whether this process may open files in other network namespaces:
/// through its namespace helper, or itself (setns needs CAP_SYS_ADMIN,
/// `netns_install` in net/core/net_namespace.c).
pub fn can_enter_others() -> bool {
    netns_opener::helper().is_some()
        || procfs::effective_capabilities("self").is_ok_and(|caps| caps & (1 << procfs::CAP_SYS_ADMIN) != 0)
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
    socket_cookie(fd.as_fd()).map_err(NetnsError::Cookie)
}

/// The cookie of the namespace a socket was made in (any socket: a
/// `sock_diag` one the helper opened in a namespace names it).
pub fn socket_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the namespace at `path`.
pub fn cookie_of(path: &Path) -> Result<u64, NetnsError> {
    use netns_opener::NetnsFile;
    let mut opened = open_in(path, Wanted::of(&[NetnsFile::SockDiag]))?;
    let socket = opened
        .take(NetnsFile::SockDiag)
        .ok_or_else(|| NetnsError::Missing {
            path: path.to_owned(),
            what: "socket",
        })?;
    socket_cookie(socket.as_fd()).map_err(NetnsError::Cookie)
}

/// The addresses configured in the calling thread's namespace.
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
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
