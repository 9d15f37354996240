//! Opening what portmon reads inside another network namespace without
//! holding the privilege to enter it.
//!
//! Entering a namespace (`setns`) needs `CAP_SYS_ADMIN`, and opening other
//! users' `/proc/PID/ns/net` needs `CAP_SYS_PTRACE`. The process that parses
//! netlink, HTTP and `/proc` should hold neither, so the daemon forks a
//! small helper at start, before anything else is open and before any
//! thread exists (OpenSSH's privilege separation). The helper keeps those
//! two capabilities and nothing else, and answers one kind of request: for
//! a namespace named by process id or `/run/netns` name — never a path —
//! it enters the namespace, opens a fixed list of files there
//! ([`NetnsFile`]: the `sock_diag` sockets, the pool sysctls, `sockstat`),
//! returns to its own, and hands the descriptors over (`SCM_RIGHTS`). A
//! socket or procfs file keeps the namespace it was opened in, so the
//! daemon reads them with no privilege at all; and as the helper holds
//! capabilities the daemon lacks, the daemon (same user) can neither trace
//! it nor read its memory (`cap_ptrace_access_check`, security/commoncap.c).
//!
//! The helper answers one other request, as `CAP_SYS_PTRACE` is what
//! reading other users' `/proc/PID/fd` needs too: which processes hold
//! some sockets, by inode ([`Helper::socket_owners`]); the answer is
//! numbers, and the daemon reads each process's command and cgroup itself.
//!
//! Where the process may enter namespaces itself (`portmon ports` as root)
//! the same files are opened in-process ([`open_here`] on a thread that
//! entered the namespace).

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Component, Path, PathBuf},
    sync::{Mutex, OnceLock},
};

mod helper;
mod wire;

/// Finds the holders of `inodes` through the helper if it runs (the first
/// [`INODES_MAX`](crate::kernel::socket_owners::INODES_MAX) of them), else
/// by walking `/proc` in this process.
pub fn find_socket_owners(inodes: &[u32]) -> Walk {
    if let Some(helper) = helper() {
        match helper.socket_owners(inodes) {
            Ok(walk) => return walk,
            Err(err) => tracing::debug!("the namespace helper did not find socket owners: {err}"),
        }
    }
    crate::kernel::socket_owners::walk(inodes)
}

/// Decodes `bytes` as each message of the helper's protocol: a request, as
/// the privileged helper reads it from the daemon, and both kinds of
/// answer, as the daemon reads them back. For the fuzz target: the
/// helper's side parses input from a less-privileged process.
pub(crate) fn decode_every_message(bytes: &[u8]) {
    let _ = wire::decode_request(bytes);
    let _ = wire::decode_owners_reply(bytes);
    let _ = ReplyHead::decode(bytes);
}

use crate::kernel::socket_owners::Walk;
use wire::ReplyHead;

/// A network namespace as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The namespace of process (or thread) `pid`: `/proc/PID/ns/net`.
    Pid(u32),
    /// A namespace pinned under `/run/netns` (`ip netns add`, CNI plugins).
    Named(String),
}

impl Target {
    /// The target a namespace path names: `/proc/PID/ns/net`,
    /// `/proc/PID/task/TID/ns/net` (a thread's id opens the same way) or
    /// `/run/netns/NAME`; `None` for any other path.
    pub fn of_path(path: &Path) -> Option<Self> {
        let parts: Vec<&str> = path
            .components()
            .map(|c| match c {
                Component::Normal(part) => part.to_str(),
                Component::RootDir => Some(""),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let pid = |text: &str| {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())
                .flatten()
                .filter(|&pid: &u32| pid > 0)
        };
        match parts[..] {
            ["", "proc", p, "ns", "net"] | ["", "proc", _, "task", p, "ns", "net"] => pid(p).map(Self::Pid),
            ["", "run", "netns", name] | ["", "var", "run", "netns", name] if Self::is_plain_name(name) => {
                Some(Self::Named(name.to_owned()))
            }
            _ => None,
        }
    }

    /// The file the helper opens for this target.
    fn path(&self) -> PathBuf {
        match self {
            Self::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            Self::Named(name) => Path::new("/run/netns").join(name),
        }
    }

    /// A name that can only be a file directly under `/run/netns`.
    fn is_plain_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= wire::NAME_MAX
            && name != "."
            && name != ".."
            && !name.contains(['/', '\0'])
    }
}

/// What portmon opens inside a namespace, in the order a reply carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NetnsFile {
    /// A `NETLINK_SOCK_DIAG` socket (the first dump lane).
    SockDiag,
    /// A second one (the second dump lane).
    SockDiagSecond,
    /// `net.ipv4.ip_local_port_range`.
    PortRange,
    /// `net.ipv4.ip_local_reserved_ports`.
    ReservedPorts,
    /// `net.ipv4.tcp_tw_reuse`.
    TwReuse,
    /// `net.ipv4.ip_unprivileged_port_start`.
    UnprivilegedPortStart,
    /// `/proc/net/sockstat` of the namespace.
    Sockstat,
    /// `/proc/net/sockstat6` of the namespace.
    Sockstat6,
    /// `net.ipv4.tcp_ehash_entries` (Linux 6.1): negative where the
    /// namespace shares the host's established-socket table.
    EhashEntries,
}

impl NetnsFile {
    pub const ALL: [NetnsFile; 9] = [
        NetnsFile::SockDiag,
        NetnsFile::SockDiagSecond,
        NetnsFile::PortRange,
        NetnsFile::ReservedPorts,
        NetnsFile::TwReuse,
        NetnsFile::UnprivilegedPortStart,
        NetnsFile::Sockstat,
        NetnsFile::Sockstat6,
        NetnsFile::EhashEntries,
    ];

    /// Where the file is, seen from a thread inside the namespace (`None`
    /// for the sockets).
    pub fn path(self) -> Option<&'static str> {
        Some(match self {
            NetnsFile::SockDiag | NetnsFile::SockDiagSecond => return None,
            NetnsFile::PortRange => "/proc/sys/net/ipv4/ip_local_port_range",
            NetnsFile::ReservedPorts => "/proc/sys/net/ipv4/ip_local_reserved_ports",
            NetnsFile::TwReuse => "/proc/sys/net/ipv4/tcp_tw_reuse",
            NetnsFile::UnprivilegedPortStart => "/proc/sys/net/ipv4/ip_unprivileged_port_start",
            NetnsFile::Sockstat => "/proc/thread-self/net/sockstat",
            NetnsFile::Sockstat6 => "/proc/thread-self/net/sockstat6",
            NetnsFile::EhashEntries => "/proc/sys/net/ipv4/tcp_ehash_entries",
        })
    }

    const fn bit(self) -> u16 {
        1 << self as u8
    }

    /// Opens it in the calling thread's namespace.
    fn open(self) -> io::Result<OwnedFd> {
        match self.path() {
            Some(path) => File::open(path).map(OwnedFd::from),
            None => super::sock_diag::socket(),
        }
    }
}

/// A set of [`NetnsFile`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted(u16);

impl Wanted {
    /// None: only the namespace's inode.
    pub const NONE: Wanted = Wanted(0);
    /// Every file.
    pub const ALL: Wanted = Wanted((1 << NetnsFile::ALL.len()) - 1);

    pub const fn of(files: &[NetnsFile]) -> Self {
        let mut mask = 0;
        let mut i = 0;
        while i < files.len() {
            mask |= files[i].bit();
            i += 1;
        }
        Self(mask)
    }

    pub const fn contains(self, file: NetnsFile) -> bool {
        self.0 & file.bit() != 0
    }

    /// How many files.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What was opened in one namespace.
#[derive(Debug, Default)]
pub struct Opened {
    /// The namespace's inode (`ip netns identify`, `lsns`).
    pub inode: u64,
    files: [Option<OwnedFd>; NetnsFile::ALL.len()],
}

impl Opened {
    /// Takes `file` out, if it was opened.
    pub fn take(&mut self, file: NetnsFile) -> Option<OwnedFd> {
        self.files[file as usize].take()
    }

    fn present(&self) -> u16 {
        NetnsFile::ALL
            .iter()
            .filter(|f| self.files[**f as usize].is_some())
            .fold(0, |m, f| m | f.bit())
    }
}

/// Opens `wanted` in the calling thread's namespace. A file missing there
/// (no IPv6, an older kernel's sysctl) is left out; the caller decides
/// what it cannot do without, and says so. Nothing is logged here: in the
/// helper, the daemon's log writer's descriptor is closed, and its number
/// may by now be one of these files.
pub fn open_here(wanted: Wanted) -> Opened {
    let mut opened = Opened::default();
    for file in NetnsFile::ALL {
        if wanted.contains(file) {
            opened.files[file as usize] = file.open().ok();
        }
    }
    opened
}

#[derive(Debug, thiserror::Error)]
pub enum OpenerError {
    #[error(
        "cannot start the namespace helper: {threads} threads run, and only a process with one \
         thread may fork it"
    )]
    Threads { threads: usize },
    #[error("cannot start the namespace helper")]
    Start(#[source] io::Error),
    #[error("the namespace helper refused or failed to open {target:?}")]
    Refused {
        target: Target,
        #[source]
        source: io::Error,
    },
    #[error("the namespace helper is gone; other namespaces are no longer entered")]
    Gone,
    #[error("cannot reach the namespace helper")]
    Channel(#[source] io::Error),
}

/// How long the daemon waits for one answer: the helper does a few system
/// calls per request, so a wait this long means it is stuck or stopped.
const ANSWER_TIMEOUT: libc::time_t = 5;

/// The daemon's end of the helper.
#[derive(Debug)]
pub struct Helper {
    pid: u32,
    /// `None` once the helper is found gone.
    channel: Mutex<Option<OwnedFd>>,
}

static HELPER: OnceLock<Helper> = OnceLock::new();

/// The helper this process started, if any and still running.
pub fn helper() -> Option<&'static Helper> {
    HELPER
        .get()
        .filter(|h| h.channel.lock().is_ok_and(|c| c.is_some()))
}

/// Forks the helper, which keeps only the capabilities in `keep` (a mask).
/// Must run while the process has one thread and before it opens anything
/// the helper should not hold: the child closes every descriptor but its
/// end of the channel and the standard ones. Returns the helper's pid.
pub fn start_helper(keep: u64) -> Result<u32, OpenerError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads != 1 {
        return Err(OpenerError::Threads { threads });
    }
    let mut ends = [0; 2];
    // SAFETY: socketpair writes two descriptors into `ends`.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            ends.as_mut_ptr(),
        )
    } != 0
    {
        return Err(OpenerError::Start(io::Error::last_os_error()));
    }
    // SAFETY: two fresh descriptors nobody else owns.
    let (daemon_end, helper_end) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the process has one thread (checked above), so the child
    // starts with every lock free and runs only `helper::run`, which never
    // returns.
    match unsafe { libc::fork() } {
        -1 => Err(OpenerError::Start(io::Error::last_os_error())),
        0 => {
            drop(daemon_end);
            helper::run(helper_end, parent, keep)
        }
        pid => {
            drop(helper_end);
            let timeout = libc::timeval {
                tv_sec: ANSWER_TIMEOUT,
                tv_usec: 0,
            };
            // SAFETY: a valid fd, and a timeval of the size given.
            unsafe {
                libc::setsockopt(
                    daemon_end.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&timeout).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            let helper = Helper {
                pid: pid as u32,
                channel: Mutex::new(Some(daemon_end)),
            };
            HELPER
                .set(helper)
                .map_err(|_| OpenerError::Start(io::Error::other("a namespace helper already runs")))?;
            Ok(pid as u32)
        }
    }
}

/// Says, once, when the helper has exited (killed, or crashed); the
/// daemon goes on with what it already opened.
pub fn check_helper() {
    if let Some(helper) = helper() {
        let mut status = 0;
        // SAFETY: waitpid on our own child, without blocking.
        let reaped = unsafe { libc::waitpid(helper.pid as i32, &mut status, libc::WNOHANG) };
        if reaped == helper.pid as i32 {
            helper.gone(&format!("exited with wait status {status:#x}"));
        }
    }
}

impl Helper {
    /// The helper's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Has the helper open `wanted` in `target`'s namespace.
    pub fn open(&self, target: &Target, wanted: Wanted) -> Result<Opened, OpenerError> {
        let channel = self.channel.lock().map_err(|_| OpenerError::Gone)?;
        let Some(socket) = channel.as_ref() else {
            return Err(OpenerError::Gone);
        };
        let exchange = || -> io::Result<(Option<ReplyHead>, Vec<OwnedFd>)> {
            wire::send(socket.as_fd(), &wire::encode_request(target, wanted), &[])?;
            let mut buffer = [0u8; wire::REPLY_LEN + 1];
            let (n, fds) = wire::recv(socket.as_fd(), &mut buffer)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok((ReplyHead::decode(&buffer[..n]), fds))
        };
        let (head, fds) = match exchange() {
            Ok(reply) => reply,
            Err(err) => {
                drop(channel);
                self.gone(&err.to_string());
                return Err(OpenerError::Channel(err));
            }
        };
        let refused = |source| OpenerError::Refused {
            target: target.clone(),
            source,
        };
        let head =
            head.ok_or_else(|| refused(io::Error::new(io::ErrorKind::InvalidData, "a malformed reply")))?;
        if head.errno != 0 {
            return Err(refused(io::Error::from_raw_os_error(head.errno)));
        }
        if head.present & !wanted.0 != 0 || head.present.count_ones() as usize != fds.len() {
            return Err(refused(io::Error::new(
                io::ErrorKind::InvalidData,
                "a reply whose descriptors do not match its files",
            )));
        }
        let mut opened = Opened {
            inode: head.inode,
            ..Opened::default()
        };
        let mut fds = fds.into_iter();
        for file in NetnsFile::ALL {
            if head.present & file.bit() != 0 {
                opened.files[file as usize] = fds.next();
            }
        }
        Ok(opened)
    }

    /// Has the helper find which processes hold the sockets `inodes` (the
    /// first [`INODES_MAX`](crate::kernel::socket_owners::INODES_MAX)); an
    /// answer naming an inode not asked about is refused.
    pub fn socket_owners(&self, inodes: &[u32]) -> Result<Walk, OpenerError> {
        let refused = |source| OpenerError::Refused {
            target: Target::Pid(self.pid),
            source,
        };
        let channel = self.channel.lock().map_err(|_| OpenerError::Gone)?;
        let Some(socket) = channel.as_ref() else {
            return Err(OpenerError::Gone);
        };
        let exchange = || -> io::Result<Vec<u8>> {
            wire::send(socket.as_fd(), &wire::encode_owners_request(inodes), &[])?;
            let mut buffer = vec![0u8; wire::OWNERS_REPLY_MAX + 1];
            let (n, _fds) = wire::recv(socket.as_fd(), &mut buffer)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buffer.truncate(n);
            Ok(buffer)
        };
        let reply = match exchange() {
            Ok(reply) => reply,
            Err(err) => {
                drop(channel);
                self.gone(&err.to_string());
                return Err(OpenerError::Channel(err));
            }
        };
        let walk = wire::decode_owners_reply(&reply)
            .ok_or_else(|| refused(io::Error::new(io::ErrorKind::InvalidData, "a malformed reply")))?
            .map_err(|errno| refused(io::Error::from_raw_os_error(errno)))?;
        let asked: std::collections::HashSet<u32> = inodes.iter().copied().collect();
        if walk.holders.keys().any(|inode| !asked.contains(inode)) {
            return Err(refused(io::Error::new(
                io::ErrorKind::InvalidData,
                "a reply naming sockets not asked about",
            )));
        }
        Ok(walk)
    }

    /// Closes the channel and says so once, with what portmon still covers.
    fn gone(&self, why: &str) {
        let Ok(mut channel) = self.channel.lock() else {
            return;
        };
        if channel.take().is_some() {
            // SAFETY: reaping our own child if it exited; never blocks.
            unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            tracing::error!(
                pid = self.pid,
                "the namespace helper is gone ({why}): network namespaces found from now on are \
                 not entered, the socket inventory and pools cover portmon's own namespace and \
                 those already open; restart portmon to cover every namespace again"
            );
        }
    }
}

#[cfg(test)]
mod tests;
