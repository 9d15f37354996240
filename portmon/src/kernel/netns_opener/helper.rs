//! The helper process itself: what it keeps, and its one loop.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::fs::MetadataExt,
};

use super::{open_here, wire, Opened, Target, Wanted};
use crate::kernel::{capabilities, socket_owners};

/// The helper's command name in `ps` (15 bytes at most; the threads that
/// enter namespaces in-process are `portmon-netns`).
pub const HELPER_NAME: &str = "portmon-privsep";

/// `NS_GET_NSTYPE` (include/uapi/linux/nsfs.h, `_IO(0xb7, 0x3)`).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The forked child's whole life: dies with the daemon, keeps only `keep`
/// of its capabilities and only its end of the channel, and answers
/// requests until the daemon closes the channel.
pub(super) fn run(channel: OwnedFd, parent: libc::pid_t, keep: u64) -> ! {
    // SAFETY: prctl, signal, getppid and close_range take integers (and one
    // NUL-terminated name) only; this process has one thread.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // The daemon may have died before the line above.
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        let name = CString::new(HELPER_NAME).unwrap_or_default();
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        // A terminal's ^C or a reload's SIGHUP is for the daemon; the
        // helper goes with it (PR_SET_PDEATHSIG) or at SIGTERM.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let fd = channel.as_raw_fd() as libc::c_uint;
        if fd > 3 {
            libc::syscall(libc::SYS_close_range, 3, fd - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
    }
    if capabilities::keep_only(keep).is_err() {
        // SAFETY: exiting without running the daemon's destructors.
        unsafe { libc::_exit(1) };
    }
    // Not dumpable: no core with the daemon's memory, and /proc/PID of the
    // helper owned by root.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let code = match File::open("/proc/thread-self/ns/net") {
        Ok(own) => i32::from(serve(channel.as_fd(), &own).is_err()),
        Err(_) => 1,
    };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Answers requests on `channel` until it is closed (`Ok`) or fails.
/// `own` is the helper's namespace, returned to after each request.
pub(super) fn serve(channel: BorrowedFd<'_>, own: &File) -> io::Result<()> {
    let mut buffer = vec![0u8; wire::REQUEST_MAX + 1];
    loop {
        // Descriptors sent to the helper are dropped (closed) unused.
        let (n, _ignored) = wire::recv(channel, &mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        let request = match wire::decode_request(&buffer[..n]) {
            Ok(wire::Request::SocketOwners(inodes)) => {
                let walk = socket_owners::walk(&inodes);
                wire::send(channel, &wire::encode_owners_reply(0, &walk), &[])?;
                continue;
            }
            Ok(wire::Request::Open(target, wanted)) => Ok((target, wanted)),
            Err(errno) => Err(errno),
        };
        let answer = request.and_then(|(target, wanted)| answer(&target, wanted, own));
        let (head, fds) = match answer {
            Ok(opened) => {
                let head = wire::ReplyHead {
                    errno: 0,
                    inode: opened.inode,
                    present: opened.present(),
                };
                (head, opened.files.into_iter().flatten().collect())
            }
            Err(errno) => (
                wire::ReplyHead {
                    errno,
                    inode: 0,
                    present: 0,
                },
                Vec::new(),
            ),
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect::<Vec<_>>();
        wire::send(channel, &head.encode(), &raw)?;
    }
}

/// Opens `wanted` in `target`'s namespace; an errno for the daemon if not.
fn answer(target: &Target, wanted: Wanted, own: &File) -> Result<Opened, i32> {
    let errno = |err: io::Error| err.raw_os_error().unwrap_or(libc::EIO);
    let path = CString::new(target.path().into_os_string().into_encoded_bytes()).map_err(|_| libc::EINVAL)?;
    let follow = match target {
        // /proc/PID/ns/net is a link by nature; a /run/netns name is not.
        Target::Pid(_) => 0,
        Target::Named(_) => libc::O_NOFOLLOW,
    };
    // SAFETY: a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | follow) };
    if fd < 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let ns = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // Only a network namespace: a file planted under /run/netns is refused
    // before anything is entered.
    // SAFETY: an ioctl with no argument on a descriptor we own.
    if unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE) } != libc::CLONE_NEWNET {
        return Err(libc::EINVAL);
    }
    let meta = ns.metadata().map_err(errno)?;
    let mut opened = if wanted.is_empty() {
        Opened::default()
    } else if own
        .metadata()
        .is_ok_and(|o| o.ino() == meta.ino() && o.dev() == meta.dev())
    {
        open_here(wanted)
    } else {
        // SAFETY: a namespace descriptor; moves this, the only, thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        let opened = open_here(wanted);
        // SAFETY: as above. Never answer another request from the wrong
        // namespace: if the way back fails, the helper ends.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // SAFETY: exiting; the daemon sees the channel close.
            unsafe { libc::_exit(1) };
        }
        opened
    };
    opened.inode = meta.ino();
    Ok(opened)
}
