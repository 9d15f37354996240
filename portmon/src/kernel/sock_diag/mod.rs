//! A `NETLINK_SOCK_DIAG` socket and the dumps portmon asks of it: the
//! sockets of the namespace the socket was opened in.
//!
//! TCP is asked with the legacy request (`TCPDIAG_GETSOCK`, `struct
//! inet_diag_req`): the kernel answers it for both families in one walk of
//! its socket tables (`inet_diag_dump_compat` in net/ipv4/inet_diag.c sets
//! `sdiag_family = AF_UNSPEC`), where `SOCK_DIAG_BY_FAMILY` walks them once
//! per family — and each walk visits every socket of every namespace. UDP
//! has no such request (`inet_diag_type2proto` knows TCP only), so it is
//! asked once per family.
//!
//! The kernel fills one datagram of at most 32 KiB per `recv`
//! (`netlink_recvmsg` caps `max_recvmsg_len` at `SKB_WITH_OVERHEAD(32768)`),
//! about 260 sockets: a larger buffer would not save a system call. But it
//! sizes every datagram of a socket's dumps by the largest buffer that
//! socket was ever given (`netlink_dump`), and a 32 KiB datagram is a
//! multi-page allocation, where 8 KiB comes from the slab. Most
//! namespaces' dumps (listeners only, beside the walk) fit in one small
//! datagram, and every scrape asks them all: so a socket starts with a
//! small buffer and takes the large one for good once a dump needed more
//! than one datagram. It never goes back, as a datagram sized for a larger
//! buffer than the one given would be cut short.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use portmon_common::{Family, Proto};

pub mod filter;
mod parse;
mod socket;

pub use filter::{End, Ports};
pub use socket::{is_listening, NsSocket, Socket, SocketState};

use parse::{Progress, Reader, SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// What one `recv` can return (see the module comment).
const RECV_BUFFER: usize = 32 * 1024;
/// A socket's first buffer: `SKB_WITH_OVERHEAD(8192)` on x86-64, the
/// largest datagram the kernel's slab serves (see the module comment).
const SMALL_RECV_BUFFER: usize = 8192 - 320;
/// How long one receive of a dump may wait for the kernel.
const RECEIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The state bit of `TCP_BOUND_INACTIVE` (include/net/tcp_states.h):
/// sockets bound and neither listening nor connected, which hold a port all
/// the same. Linux dumps them since 6.7 (as CLOSE) from a walk of its own,
/// over every bound socket of the host (`inet_diag_dump_icsk`); older
/// kernels ignore the bit.
pub const TCP_BOUND_INACTIVE: u32 = 1 << 13;
/// How often a dump is asked for before it counts as failed.
pub const ATTEMPTS: usize = 3;

/// One dump request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// TCP sockets of both families in the states given, on the ports given.
    Tcp { states: u32, ports: Ports },
    /// UDP sockets of one family.
    Udp(Family),
}

impl Dump {
    pub fn proto(self) -> Proto {
        match self {
            Dump::Tcp { .. } => Proto::Tcp,
            Dump::Udp(_) => Proto::Udp,
        }
    }

    /// The families its answer covers.
    pub fn families(self) -> &'static [Family] {
        match self {
            Dump::Tcp { .. } => &[Family::Inet, Family::Inet6],
            Dump::Udp(Family::Inet) => &[Family::Inet],
            Dump::Udp(Family::Inet6) => &[Family::Inet6],
        }
    }

    /// The request: `nlmsghdr`, then `inet_diag_req` for TCP or
    /// `inet_diag_req_v2` for UDP, with no extension asked for
    /// (`idiag_ext = 0`) and every address and port a wildcard; for TCP on
    /// some ports, the filter that keeps them.
    fn request(self, seq: u32) -> Vec<u8> {
        let (kind, body) = match self {
            // family (ignored), src_len, dst_len, ext; inet_diag_sockid
            // (48 bytes); states; dbs.
            Dump::Tcp { states, ports } => {
                let mut body = vec![0u8; 60];
                body[52..56].copy_from_slice(&states.to_ne_bytes());
                body.extend(ports.attribute().iter().flatten());
                (TCPDIAG_GETSOCK, body)
            }
            // family, protocol, ext, pad; states; inet_diag_sockid.
            Dump::Udp(family) => {
                let mut body = vec![family.raw(), Proto::Udp.raw(), 0, 0];
                body.extend_from_slice(&u32::MAX.to_ne_bytes());
                body.resize(56, 0);
                (SOCK_DIAG_BY_FAMILY, body)
            }
        };
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        let mut request = Vec::with_capacity(16 + body.len());
        request.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        request.extend_from_slice(&kind.to_ne_bytes());
        request.extend_from_slice(&flags.to_ne_bytes());
        request.extend_from_slice(&seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&body);
        request
    }
}

/// Why a dump gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("the kernel answered the dump with an error")]
    Kernel(#[source] io::Error),
    #[error("the socket tables changed under the dump (NLM_F_DUMP_INTR)")]
    Interrupted,
    #[error("the kernel's answer overran its datagram")]
    Malformed,
    #[error("cannot talk to sock_diag")]
    Io(#[source] io::Error),
}

/// What a dump needs of a socket; the tests script one.
pub trait Transport {
    fn send(&mut self, request: &[u8]) -> io::Result<()>;
    /// One datagram into `buffer`; its length.
    fn recv(&mut self, buffer: &mut [u8]) -> io::Result<usize>;
}

/// A `NETLINK_SOCK_DIAG` socket.
#[derive(Debug)]
pub struct Netlink(OwnedFd);

impl Transport for Netlink {
    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        // SAFETY: sending a buffer we own to the kernel (pid 0).
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.0.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: receiving into a buffer we own, of the length given.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// A bare `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.
pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A sock_diag socket bound to the namespace it was opened in.
#[derive(Debug)]
pub struct SockDiag<T = Netlink> {
    transport: T,
    seq: u32,
    buffer: Vec<u8>,
}

impl SockDiag {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Self> {
        Self::over_socket(socket()?)
    }

    /// A `NETLINK_SOCK_DIAG` socket opened elsewhere (in another namespace,
    /// by the namespace helper): it keeps dumping that namespace.
    pub fn over_socket(fd: OwnedFd) -> io::Result<Self> {
        // A dump the kernel stops answering (none is known) must fail that
        // dump, counted, not freeze every scrape behind it.
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a valid fd, and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self::over(Netlink(fd)))
    }
}

impl<T: Transport> SockDiag<T> {
    fn over(transport: T) -> Self {
        Self {
            transport,
            seq: 0,
            buffer: vec![0; SMALL_RECV_BUFFER],
        }
    }

    /// Appends the sockets of one dump to `out`, asking up to [`ATTEMPTS`]
    /// times; a failed attempt leaves nothing behind. The error is the last
    /// attempt's.
    pub fn dump(&mut self, dump: Dump, netns: u64, out: &mut Vec<NsSocket>) -> Result<(), DumpError> {
        let kept = out.len();
        let mut attempt = 1;
        loop {
            match self.dump_once(dump, netns, out) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    out.truncate(kept);
                    if attempt == ATTEMPTS {
                        return Err(err);
                    }
                    tracing::debug!(?dump, attempt, "sock_diag dump failed, asking again: {err}");
                    attempt += 1;
                }
            }
        }
    }

    /// One attempt. An interrupted dump is read to its end, so that the
    /// socket is free for the next request.
    fn dump_once(&mut self, dump: Dump, netns: u64, out: &mut Vec<NsSocket>) -> Result<(), DumpError> {
        self.seq = self.seq.wrapping_add(1);
        self.transport
            .send(&dump.request(self.seq))
            .map_err(DumpError::Io)?;
        let mut reader = Reader {
            seq: self.seq,
            netns,
            proto: dump.proto(),
            out,
            interrupted: false,
        };
        let mut datagrams = 0;
        loop {
            let n = self.transport.recv(&mut self.buffer).map_err(DumpError::Io)?;
            datagrams += 1;
            // More than the data and the end: this socket's dumps are large.
            if datagrams > 2 && self.buffer.len() < RECV_BUFFER {
                self.buffer.resize(RECV_BUFFER, 0);
            }
            match reader.datagram(&self.buffer[..n]) {
                Progress::More => continue,
                Progress::Done if reader.interrupted => return Err(DumpError::Interrupted),
                Progress::Done => return Ok(()),
                Progress::Failed(code) => return Err(DumpError::Kernel(io::Error::from_raw_os_error(code))),
                Progress::Malformed => return Err(DumpError::Malformed),
            }
        }
    }
}

/// Reads one datagram of a dump's answer as [`SockDiag::dump`] does, taking
/// the first message's sequence number as the request's: the fuzz targets'
/// way into the parser of what the kernel sends.
pub(crate) fn read_datagram(data: &[u8], proto: Proto, out: &mut Vec<NsSocket>) {
    let seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut reader = Reader {
        seq,
        netns: 0,
        proto,
        out,
        interrupted: false,
    };
    let _ = reader.datagram(data);
}

#[cfg(test)]
mod tests {
    use super::parse::tests::{diag_msg, done, message};
    use super::*;

    #[test]
    fn requests_have_the_kernels_layouts() {
        let tcp = Dump::Tcp {
            states: 0x1fff,
            ports: Ports::All,
        }
        .request(7);
        // nlmsghdr + inet_diag_req: the compat handler wants at least that
        // much (`inet_diag_rcv_msg_compat`).
        assert_eq!(tcp.len(), 16 + 60);
        assert_eq!(u32::from_ne_bytes(tcp[..4].try_into().unwrap()), 76);
        assert_eq!(u16::from_ne_bytes([tcp[4], tcp[5]]), TCPDIAG_GETSOCK);
        assert_eq!(u32::from_ne_bytes(tcp[8..12].try_into().unwrap()), 7);
        assert_eq!(tcp[16 + 3], 0, "no extension asked for");
        assert_eq!(
            u32::from_ne_bytes(tcp[16 + 52..16 + 56].try_into().unwrap()),
            0x1fff
        );

        // A filter follows the request as its attribute.
        let half = Dump::Tcp {
            states: 0x1fff,
            ports: Ports::AtMost(End::Local, 1000),
        }
        .request(9);
        assert_eq!(half.len(), 16 + 60 + 12);
        assert_eq!(u32::from_ne_bytes(half[..4].try_into().unwrap()), 88);
        assert_eq!(half[76..], Ports::AtMost(End::Local, 1000).attribute().unwrap());

        let udp = Dump::Udp(Family::Inet6).request(8);
        assert_eq!(udp.len(), 16 + 56);
        assert_eq!(u16::from_ne_bytes([udp[4], udp[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(
            &udp[16..20],
            &[libc::AF_INET6 as u8, libc::IPPROTO_UDP as u8, 0, 0]
        );
    }

    /// Answers each request with the datagrams `script` makes from its
    /// attempt number (from 1) and sequence number.
    struct Scripted<F> {
        script: F,
        attempt: u32,
        queue: std::collections::VecDeque<Vec<u8>>,
        /// The buffer length of each receive.
        lengths: Vec<usize>,
    }

    impl<F: FnMut(u32, u32) -> Vec<Vec<u8>>> Transport for Scripted<F> {
        fn send(&mut self, request: &[u8]) -> io::Result<()> {
            self.attempt += 1;
            let seq = u32::from_ne_bytes(request[8..12].try_into().unwrap());
            self.queue = (self.script)(self.attempt, seq).into();
            Ok(())
        }

        fn recv(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            let datagram = self.queue.pop_front().expect("read past the script");
            buffer[..datagram.len()].copy_from_slice(&datagram);
            self.lengths.push(buffer.len());
            Ok(datagram.len())
        }
    }

    fn scripted<F: FnMut(u32, u32) -> Vec<Vec<u8>>>(script: F) -> SockDiag<Scripted<F>> {
        SockDiag::over(Scripted {
            script,
            attempt: 0,
            queue: Default::default(),
            lengths: Vec::new(),
        })
    }

    #[test]
    fn a_socket_takes_the_large_buffer_once_a_dump_needs_it_and_keeps_it() {
        // Dumps 1 and 2: one datagram and the end; dump 3: three
        // datagrams; dump 4: small again.
        let mut diag = scripted(|attempt, seq| match attempt {
            3 => vec![established(seq, 3), established(seq, 4), done(seq, MULTI, 0)],
            _ => vec![established(seq, u64::from(attempt)), done(seq, MULTI, 0)],
        });
        let mut out = Vec::new();
        for _ in 0..4 {
            diag.dump(TCP, 9, &mut out).unwrap();
        }
        assert_eq!(out.len(), 5);
        let small = SMALL_RECV_BUFFER;
        let large = RECV_BUFFER;
        // It grows after the third datagram, for the rest of dump 3 had
        // there been more.
        assert_eq!(
            diag.transport.lengths,
            [small, small, small, small, small, small, small, large, large]
        );
    }

    const TCP: Dump = Dump::Tcp {
        states: 0x1fff,
        ports: Ports::All,
    };
    const MULTI: u16 = 2;
    const INTR: u16 = MULTI | 0x10;

    fn established(seq: u32, cookie: u64) -> Vec<u8> {
        message(seq, TCPDIAG_GETSOCK, MULTI, &diag_msg(2, 1, 40000, 443, cookie))
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        message(seq, libc::NLMSG_ERROR as u16, 0, &body)
    }

    #[test]
    fn an_interrupted_or_failed_dump_is_asked_again_and_leaves_nothing_behind() {
        let mut diag = scripted(|attempt, seq| match attempt {
            // Interrupted: read to the end, then dropped.
            1 => vec![
                established(seq, 1),
                [established(seq, 2), done(seq, INTR, 0)].concat(),
            ],
            // Refused.
            2 => vec![error(seq, libc::EBUSY)],
            // Aborted by the kernel half way.
            3 => vec![established(seq, 3), done(seq, MULTI, libc::ENOMEM)],
            _ => vec![[established(seq, 4), established(seq, 5), done(seq, MULTI, 0)].concat()],
        });
        let before = NsSocket {
            netns: 1,
            socket: Socket {
                proto: Proto::Udp,
                family: Family::Inet,
                state: SocketState::Close,
                local: "0.0.0.0:53".parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                cookie: 0,
                uid: 0,
                inode: 0,
            },
        };
        let mut out = vec![before];
        // Three attempts fail: the last one's error, nothing added.
        let err = diag.dump(TCP, 9, &mut out).unwrap_err();
        assert!(
            matches!(&err, DumpError::Kernel(e) if e.raw_os_error() == Some(libc::ENOMEM)),
            "{err:?}"
        );
        assert_eq!(out, [before]);
        // The next dump succeeds at its first attempt.
        diag.dump(TCP, 9, &mut out).unwrap();
        let cookies: Vec<u64> = out[1..].iter().map(|s| s.socket.cookie).collect();
        assert_eq!(cookies, [4, 5]);
        assert!(out[1..].iter().all(|s| s.netns == 9));
    }

    #[test]
    fn a_dump_interrupted_at_every_attempt_is_an_error() {
        let mut diag = scripted(|_, seq| vec![established(seq, 1), done(seq, INTR, 0)]);
        let mut out = Vec::new();
        assert!(matches!(diag.dump(TCP, 9, &mut out), Err(DumpError::Interrupted)));
        assert!(out.is_empty());
        assert_eq!(diag.transport.attempt, ATTEMPTS as u32);
    }

    #[test]
    fn answers_to_an_earlier_request_are_skipped() {
        let mut diag = scripted(|_, seq| {
            vec![
                [established(seq - 1, 7), done(seq - 1, INTR, 0)].concat(),
                established(seq, 8),
                done(seq, MULTI, 0),
            ]
        });
        let mut out = Vec::new();
        diag.dump(TCP, 9, &mut out).unwrap();
        assert_eq!(out.iter().map(|s| s.socket.cookie).collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn a_tcp_dump_covers_both_families() {
        assert_eq!(TCP.families(), [Family::Inet, Family::Inet6]);
        assert_eq!(Dump::Udp(Family::Inet).families(), [Family::Inet]);
    }
}
