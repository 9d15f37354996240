//! The helper's protocol: one `SOCK_SEQPACKET` message per request and per
//! reply, so neither side ever parses a stream. A request names a namespace
//! by process id or by `/run/netns` name and says which files it wants; a
//! reply carries a status, the namespace's inode, which files came, and
//! those files' descriptors (`SCM_RIGHTS`) in [`NetnsFile`] order.
//!
//! The other request asks which processes hold some sockets, by inode; its
//! reply is plain numbers: what the walk cost, and (inode, pid) pairs.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use super::{NetnsFile, Target, Wanted};
use crate::kernel::socket_owners::{Walk, INODES_MAX};

/// The longest `/run/netns` name (a file name, `NAME_MAX`).
pub(super) const NAME_MAX: usize = 255;
const KIND_PID: u8 = 1;
const KIND_NAMED: u8 = 2;
const KIND_SOCKET_OWNERS: u8 = 3;
/// Kind, wanted files (u16), then a pid (u32), a name, or inodes (u32 each).
pub(super) const REQUEST_MAX: usize = 3 + 4 * INODES_MAX;
const _: () = assert!(REQUEST_MAX >= 3 + NAME_MAX);
/// errno (i32), processes, descriptors, unreadable (u32 each), cut short (u8).
const OWNERS_HEAD_LEN: usize = 17;
/// The longest answer about socket owners: a pair (inode, pid) per inode asked.
pub(super) const OWNERS_REPLY_MAX: usize = OWNERS_HEAD_LEN + 8 * INODES_MAX;

/// A request as the helper reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// Open `Wanted` files in a namespace.
    Open(Target, Wanted),
    /// Which processes hold these socket inodes.
    SocketOwners(Vec<u32>),
}
/// errno (i32, 0 for success), inode (u64), files present (u16).
pub(super) const REPLY_LEN: usize = 14;

pub(super) fn encode_request(target: &Target, wanted: Wanted) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_MAX);
    match target {
        Target::Pid(pid) => {
            out.push(KIND_PID);
            out.extend_from_slice(&wanted.0.to_le_bytes());
            out.extend_from_slice(&pid.to_le_bytes());
        }
        Target::Named(name) => {
            out.push(KIND_NAMED);
            out.extend_from_slice(&wanted.0.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
    }
    out
}

/// Asks which processes hold `inodes` (the first [`INODES_MAX`]).
pub(super) fn encode_owners_request(inodes: &[u32]) -> Vec<u8> {
    let inodes = &inodes[..inodes.len().min(INODES_MAX)];
    let mut out = Vec::with_capacity(3 + 4 * inodes.len());
    out.extend_from_slice(&[KIND_SOCKET_OWNERS, 0, 0]);
    for inode in inodes {
        out.extend_from_slice(&inode.to_le_bytes());
    }
    out
}

/// A request as the helper reads it: anything but a positive pid, a plain
/// file name (no `/`, not `.` or `..`, no NUL) or 1 to [`INODES_MAX`]
/// inodes is refused with `EINVAL`, so no request can make the helper open
/// a path of its choosing.
pub(super) fn decode_request(bytes: &[u8]) -> Result<Request, i32> {
    let (&kind, rest) = bytes.split_first().ok_or(libc::EINVAL)?;
    let (wanted, payload) = rest.split_first_chunk::<2>().ok_or(libc::EINVAL)?;
    let wanted = Wanted(u16::from_le_bytes(*wanted));
    if wanted.0 & !Wanted::ALL.0 != 0 {
        return Err(libc::EINVAL);
    }
    if kind == KIND_SOCKET_OWNERS {
        if !wanted.is_empty()
            || payload.is_empty()
            || !payload.len().is_multiple_of(4)
            || payload.len() > 4 * INODES_MAX
        {
            return Err(libc::EINVAL);
        }
        let inodes = payload
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Ok(Request::SocketOwners(inodes));
    }
    let target = match kind {
        KIND_PID => {
            let pid = u32::from_le_bytes(payload.try_into().map_err(|_| libc::EINVAL)?);
            if pid == 0 || pid > i32::MAX as u32 {
                return Err(libc::EINVAL);
            }
            Target::Pid(pid)
        }
        KIND_NAMED => {
            let name = std::str::from_utf8(payload).map_err(|_| libc::EINVAL)?;
            if !Target::is_plain_name(name) {
                return Err(libc::EINVAL);
            }
            Target::Named(name.to_owned())
        }
        _ => return Err(libc::EINVAL),
    };
    Ok(Request::Open(target, wanted))
}

/// The answer to [`Request::SocketOwners`]: `errno` 0 and what the walk
/// found, or an errno and nothing.
pub(super) fn encode_owners_reply(errno: i32, walk: &Walk) -> Vec<u8> {
    let mut out = Vec::with_capacity(OWNERS_HEAD_LEN + 8 * walk.holders.len());
    out.extend_from_slice(&errno.to_le_bytes());
    for n in [walk.processes, walk.descriptors, walk.unreadable] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.push(u8::from(walk.cut_short));
    for (inode, pid) in walk.holders.iter().take(INODES_MAX) {
        out.extend_from_slice(&inode.to_le_bytes());
        out.extend_from_slice(&pid.to_le_bytes());
    }
    out
}

/// An answer about socket owners: `Err(errno)` for a refusal, `None` for
/// bytes that are no answer.
pub(super) fn decode_owners_reply(bytes: &[u8]) -> Option<Result<Walk, i32>> {
    if bytes.len() < OWNERS_HEAD_LEN
        || bytes.len() > OWNERS_REPLY_MAX
        || !(bytes.len() - OWNERS_HEAD_LEN).is_multiple_of(8)
    {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let errno = word(0) as i32;
    if errno != 0 {
        return Some(Err(errno));
    }
    let holders = bytes[OWNERS_HEAD_LEN..]
        .chunks_exact(8)
        .map(|pair| {
            let inode = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let pid = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            (inode, pid)
        })
        .collect();
    Some(Ok(Walk {
        holders,
        processes: word(4),
        descriptors: word(8),
        unreadable: word(12),
        cut_short: bytes[16] != 0,
    }))
}

/// The fixed part of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplyHead {
    pub errno: i32,
    pub inode: u64,
    pub present: u16,
}

impl ReplyHead {
    pub fn encode(self) -> [u8; REPLY_LEN] {
        let mut out = [0; REPLY_LEN];
        out[..4].copy_from_slice(&self.errno.to_le_bytes());
        out[4..12].copy_from_slice(&self.inode.to_le_bytes());
        out[12..].copy_from_slice(&self.present.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; REPLY_LEN] = bytes.try_into().ok()?;
        let (errno, rest) = bytes.split_first_chunk::<4>()?;
        let (inode, present) = rest.split_first_chunk::<8>()?;
        Some(Self {
            errno: i32::from_le_bytes(*errno),
            inode: u64::from_le_bytes(*inode),
            present: u16::from_le_bytes(present.try_into().ok()?),
        })
    }
}

/// Room for every file's descriptor in one control message.
const CONTROL_LEN: usize = 64;
const _: () = assert!(
    CONTROL_LEN
        >= std::mem::size_of::<libc::cmsghdr>() + NetnsFile::ALL.len() * std::mem::size_of::<RawFd>() + 8
);

/// Sends one message, with `fds` attached when there are any.
pub(super) fn send(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CONTROL_LEN / 8];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives
    // the sendmsg call, and the control buffer (u64-aligned) is large
    // enough for the descriptors (checked at compile time above).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let payload = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload) as usize;
            let header = libc::CMSG_FIRSTHDR(&raw const msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast::<RawFd>(), fds.len());
        }
        libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message into `buffer`: its length (0 when the other end is
/// gone) and the descriptors attached, close-on-exec.
pub(super) fn recv(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let mut control = [0u64; CONTROL_LEN / 8];
    loop {
        // SAFETY: as in `send`; the kernel writes at most msg_controllen
        // bytes of control data and at most iov_len bytes of payload.
        let (n, msg) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = CONTROL_LEN;
            let n = libc::recvmsg(socket.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
            (n, msg)
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut fds = Vec::new();
        // SAFETY: walking the control messages the kernel just wrote, as
        // CMSG_FIRSTHDR/CMSG_NXTHDR bound them; each SCM_RIGHTS payload is
        // an array of descriptors now ours.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&raw const msg);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(header).cast::<RawFd>();
                    let bytes = (*header).cmsg_len - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                header = libc::CMSG_NXTHDR(&raw const msg, header);
            }
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a truncated message"));
        }
        return Ok((n as usize, fds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_paths_are_refused() {
        let wanted = Wanted::of(&[NetnsFile::SockDiag, NetnsFile::Sockstat6]);
        for target in [Target::Pid(42), Target::Named("cni-1234".into())] {
            assert_eq!(
                decode_request(&encode_request(&target, wanted)),
                Ok(Request::Open(target, wanted))
            );
        }
        let refused: &[&[u8]] = &[
            b"",
            &[KIND_PID, 0, 0],
            &[KIND_PID, 0, 0, 0, 0, 0, 0],
            &[KIND_PID, 0, 0, 0xff, 0xff, 0xff, 0xff],
            &[KIND_PID, 0xff, 0xff, 1, 0, 0, 0],
            &[KIND_NAMED, 0, 0],
            &[KIND_NAMED, 0, 0, b'.'],
            &[KIND_NAMED, 0, 0, b'.', b'.'],
            b"\x02\x00\x00/etc/shadow",
            b"\x02\x00\x00../../etc/shadow",
            b"\x02\x00\x00a\0b",
            &[9, 0, 0, 1, 0, 0, 0],
        ];
        for bytes in refused {
            assert_eq!(decode_request(bytes), Err(libc::EINVAL), "{bytes:?}");
        }
        let long = [&[KIND_NAMED, 0, 0][..], &[b'a'; NAME_MAX + 1]].concat();
        assert_eq!(decode_request(&long), Err(libc::EINVAL));
    }

    #[test]
    fn owner_requests_carry_inodes_only() {
        let inodes = [7, 0xFFFF_FFFF, 12_345];
        assert_eq!(
            decode_request(&encode_owners_request(&inodes)),
            Ok(Request::SocketOwners(inodes.to_vec()))
        );
        let many: Vec<u32> = (0..2 * INODES_MAX as u32).collect();
        let encoded = encode_owners_request(&many);
        assert!(encoded.len() <= REQUEST_MAX);
        assert_eq!(
            decode_request(&encoded),
            Ok(Request::SocketOwners(many[..INODES_MAX].to_vec())),
            "the first INODES_MAX are asked"
        );
        let refused: &[&[u8]] = &[
            &[KIND_SOCKET_OWNERS, 0, 0],
            &[KIND_SOCKET_OWNERS, 0, 0, 1, 0, 0],
            &[KIND_SOCKET_OWNERS, 1, 0, 1, 0, 0, 0],
        ];
        for bytes in refused {
            assert_eq!(decode_request(bytes), Err(libc::EINVAL), "{bytes:?}");
        }
        let too_many = [&[KIND_SOCKET_OWNERS, 0, 0][..], &vec![1; 4 * INODES_MAX + 4]].concat();
        assert_eq!(decode_request(&too_many), Err(libc::EINVAL));
    }

    #[test]
    fn owner_replies_round_trip_and_odd_lengths_are_no_reply() {
        let walk = Walk {
            holders: [(7, 100), (8, 1)].into_iter().collect(),
            processes: 300,
            descriptors: 9000,
            unreadable: 2,
            cut_short: true,
        };
        let bytes = encode_owners_reply(0, &walk);
        assert_eq!(decode_owners_reply(&bytes), Some(Ok(walk)));
        assert_eq!(
            decode_owners_reply(&encode_owners_reply(libc::EINVAL, &Walk::default())),
            Some(Err(libc::EINVAL))
        );
        assert_eq!(decode_owners_reply(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_owners_reply(&[0; 3]), None);
    }

    #[test]
    fn reply_heads_round_trip() {
        let head = ReplyHead {
            errno: libc::ENOENT,
            inode: 0xEFFF_FFF9,
            present: 0b101,
        };
        assert_eq!(ReplyHead::decode(&head.encode()), Some(head));
        assert_eq!(ReplyHead::decode(&[0; 3]), None);
    }
}
