//! The kernel's answers to a sock_diag dump: netlink messages, each a
//! `struct inet_diag_msg` (include/uapi/linux/inet_diag.h), read in place
//! into [`NsSocket`]s without an allocation per socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portmon_common::{Family, Proto};

use super::{NsSocket, Socket, SocketState};

/// `nlmsg_type` of the legacy TCP dump and of its answers.
pub(super) const TCPDIAG_GETSOCK: u16 = 18;
/// `nlmsg_type` of a dump by family and of its answers.
pub(super) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_DUMP_INTR` (include/uapi/linux/netlink.h): the tables changed
/// under the dump, which may have missed or repeated sockets.
const NLM_F_DUMP_INTR: u16 = 0x10;
const HEADER: usize = 16;
const INET_DIAG_MSG: usize = 72;

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` with no error: every socket was sent.
    Done,
    /// The kernel refused or aborted the dump: `NLMSG_ERROR`, or
    /// `NLMSG_DONE` carrying a negative errno (`netlink_dump`,
    /// net/netlink/af_netlink.c). The errno, positive.
    Failed(i32),
    /// A message overran the datagram: nothing after it can be read.
    Malformed,
}

/// One dump's reading: the sockets go to `out` as they come.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    /// The request's sequence number: messages of another dump are skipped.
    pub seq: u32,
    pub netns: u64,
    pub proto: Proto,
    pub out: &'a mut Vec<NsSocket>,
    /// Some message carried `NLM_F_DUMP_INTR`.
    pub interrupted: bool,
}

impl Reader<'_> {
    /// Reads the messages of one datagram.
    pub fn datagram(&mut self, mut data: &[u8]) -> Progress {
        while data.len() >= HEADER {
            let len = u32_at(data, 0) as usize;
            if !(HEADER..=data.len()).contains(&len) {
                return Progress::Malformed;
            }
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            let flags = u16::from_ne_bytes([data[6], data[7]]);
            let body = &data[HEADER..len];
            if u32_at(data, 8) == self.seq {
                self.interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match i32::from(kind) {
                    libc::NLMSG_DONE => {
                        return match errno(body) {
                            0 => Progress::Done,
                            code => Progress::Failed(code),
                        }
                    }
                    // An error code of 0 is an acknowledgement, which a
                    // dump request does not ask for.
                    libc::NLMSG_ERROR if errno(body) != 0 => return Progress::Failed(errno(body)),
                    _ if kind == TCPDIAG_GETSOCK || kind == SOCK_DIAG_BY_FAMILY => {
                        if let Some(socket) = socket(body, self.proto) {
                            self.out.push(NsSocket {
                                netns: self.netns,
                                socket,
                            });
                        }
                    }
                    _ => {}
                }
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            data = data.get((len + 3) & !3..).unwrap_or(&[]);
        }
        Progress::More
    }
}

/// The positive errno of an `NLMSG_ERROR` or `NLMSG_DONE` body (the kernel
/// sends it negated); 0 when there is none.
fn errno(body: &[u8]) -> i32 {
    if body.len() < 4 {
        return 0;
    }
    i32::from_ne_bytes([body[0], body[1], body[2], body[3]]).saturating_neg()
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// One `struct inet_diag_msg`. The family is the socket's own: a TCP dump
/// of both families in one answers with each.
fn socket(body: &[u8], proto: Proto) -> Option<Socket> {
    if body.len() < INET_DIAG_MSG {
        return None;
    }
    let family = Family::try_from(body[0]).ok()?;
    let state = match (proto, SocketState::from_kernel(body[1])?) {
        // A TCP socket in CLOSE is in no hash but the bind hash: bound.
        (Proto::Tcp, SocketState::Close) => SocketState::Bound,
        (_, state) => state,
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addr = |at: usize| -> IpAddr {
        match family {
            Family::Inet => Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]).into(),
            Family::Inet6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(octets).into()
            }
        }
    };
    // id: sport@4 dport@6 src@8 dst@24 if@40 cookie@44; then expires@52
    // rqueue@56 wqueue@60 uid@64 inode@68.
    Some(Socket {
        proto,
        family,
        state,
        local: SocketAddr::new(addr(8), port(4)),
        remote: SocketAddr::new(addr(24), port(6)),
        cookie: u64::from(u32_at(body, 44)) | (u64::from(u32_at(body, 48)) << 32),
        uid: u32_at(body, 64),
        inode: u32_at(body, 68),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const AF_INET: u8 = libc::AF_INET as u8;
    const AF_INET6: u8 = libc::AF_INET6 as u8;

    pub(in crate::kernel::sock_diag) fn message(seq: u32, kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(body);
        // NLMSG_ALIGN: the next message starts on a 4-byte boundary.
        m.resize((m.len() + 3) & !3, 0);
        m
    }

    pub(in crate::kernel::sock_diag) fn diag_msg(
        family: u8,
        state: u8,
        sport: u16,
        dport: u16,
        cookie: u64,
    ) -> Vec<u8> {
        let mut b = vec![0u8; INET_DIAG_MSG];
        b[0] = family;
        b[1] = state;
        b[4..6].copy_from_slice(&sport.to_be_bytes());
        b[6..8].copy_from_slice(&dport.to_be_bytes());
        if family == AF_INET {
            b[8..12].copy_from_slice(&[127, 0, 0, 1]);
            b[24..28].copy_from_slice(&[10, 0, 0, 2]);
        } else {
            b[23] = 1; // ::1
        }
        b[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        b[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b
    }

    pub(in crate::kernel::sock_diag) fn done(seq: u32, flags: u16, errno: i32) -> Vec<u8> {
        message(seq, libc::NLMSG_DONE as u16, flags, &(-errno).to_ne_bytes())
    }

    fn read(data: &[u8], seq: u32, proto: Proto) -> (Progress, Vec<NsSocket>, bool) {
        let mut out = Vec::new();
        let mut reader = Reader {
            seq,
            netns: 9,
            proto,
            out: &mut out,
            interrupted: false,
        };
        let progress = reader.datagram(data);
        let interrupted = reader.interrupted;
        (progress, out, interrupted)
    }

    #[test]
    fn sockets_of_both_families_in_one_tcp_dump() {
        let mut data = message(7, TCPDIAG_GETSOCK, 2, &diag_msg(AF_INET, 10, 80, 0, 1 << 40 | 5));
        data.extend(message(
            7,
            TCPDIAG_GETSOCK,
            2,
            &diag_msg(AF_INET6, 1, 40000, 443, 9),
        ));
        data.extend(message(6, TCPDIAG_GETSOCK, 2, &diag_msg(AF_INET, 1, 1, 1, 1))); // another dump's
        data.extend(message(7, TCPDIAG_GETSOCK, 2, &diag_msg(1, 1, 1, 1, 1))); // AF_UNIX: not ours
        data.extend(message(7, TCPDIAG_GETSOCK, 2, &diag_msg(AF_INET, 7, 5000, 0, 3)));
        let (progress, out, interrupted) = read(&data, 7, Proto::Tcp);
        assert_eq!((progress, interrupted), (Progress::More, false));
        let seen: Vec<_> = out
            .iter()
            .map(|s| {
                (
                    s.netns,
                    s.socket.family,
                    s.socket.state,
                    s.socket.local.port(),
                    s.socket.cookie,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (9, Family::Inet, SocketState::Listen, 80, 1 << 40 | 5),
                (9, Family::Inet6, SocketState::Established, 40000, 9),
                (9, Family::Inet, SocketState::Bound, 5000, 3),
            ]
        );
        assert_eq!(out[0].socket.remote, "10.0.0.2:0".parse().unwrap());
        assert_eq!(out[1].socket.local, "[::1]:40000".parse().unwrap());
        assert_eq!(out[1].socket.uid, 1000);
    }

    #[test]
    fn a_udp_socket_in_close_is_unconnected_not_bound() {
        let data = message(1, SOCK_DIAG_BY_FAMILY, 2, &diag_msg(AF_INET, 7, 53, 0, 1));
        let (_, out, _) = read(&data, 1, Proto::Udp);
        assert_eq!(out[0].socket.state, SocketState::Close);
        assert_eq!(out[0].socket.state_label(), "unconn");
    }

    #[test]
    fn done_ends_the_dump_and_carries_its_errno() {
        let mut data = message(3, TCPDIAG_GETSOCK, 2, &diag_msg(AF_INET, 1, 1, 2, 3));
        data.extend(done(3, 2, 0));
        data.extend(message(3, TCPDIAG_GETSOCK, 2, &diag_msg(AF_INET, 1, 1, 2, 3))); // after the end
        let (progress, out, _) = read(&data, 3, Proto::Tcp);
        assert_eq!((progress, out.len()), (Progress::Done, 1));
        assert_eq!(
            read(&done(3, 2, libc::ENOBUFS), 3, Proto::Tcp).0,
            Progress::Failed(libc::ENOBUFS)
        );
        // Another dump's end is not this one's.
        assert_eq!(read(&done(2, 2, 0), 3, Proto::Tcp).0, Progress::More);
    }

    #[test]
    fn nlmsg_error_fails_the_dump_and_an_ack_does_not() {
        // NLMSG_ERROR: the negated errno, then the request's header.
        let mut body = (-libc::EINVAL).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; HEADER]);
        let error = message(4, libc::NLMSG_ERROR as u16, 0, &body);
        let (progress, out, _) = read(&error, 4, Proto::Udp);
        assert_eq!((progress, out.len()), (Progress::Failed(libc::EINVAL), 0));
        let ack = message(4, libc::NLMSG_ERROR as u16, 0, &[0; 4 + HEADER]);
        assert_eq!(read(&ack, 4, Proto::Udp).0, Progress::More);
        // An error with no room for its code is no code.
        assert_eq!(
            read(&message(4, libc::NLMSG_ERROR as u16, 0, &[]), 4, Proto::Udp).0,
            Progress::More
        );
    }

    #[test]
    fn dump_intr_on_any_message_marks_the_dump_interrupted() {
        let intr = 2 | NLM_F_DUMP_INTR;
        let data = message(5, TCPDIAG_GETSOCK, intr, &diag_msg(AF_INET, 1, 1, 2, 3));
        let (progress, out, interrupted) = read(&data, 5, Proto::Tcp);
        assert_eq!((progress, out.len(), interrupted), (Progress::More, 1, true));
        // On the final message only, as `netlink_dump` marks NLMSG_DONE.
        let (progress, _, interrupted) = read(&done(5, intr, 0), 5, Proto::Tcp);
        assert_eq!((progress, interrupted), (Progress::Done, true));
        // Another dump's interruption is not this one's.
        assert!(!read(&done(6, intr, 0), 5, Proto::Tcp).2);
    }

    #[test]
    fn garbage_is_malformed_or_skipped_never_a_panic() {
        let cases: [(&[u8], Progress); 5] = [
            (&[0xff; 20], Progress::Malformed),
            (
                &[8, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Progress::Malformed,
            ),
            (&[1, 0, 0, 0], Progress::More),
            (&[], Progress::More),
            (
                &[16, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                Progress::More,
            ),
        ];
        for (data, want) in cases {
            assert_eq!(read(data, 1, Proto::Tcp).0, want, "{data:?}");
        }
        let short = message(1, TCPDIAG_GETSOCK, 2, &[2; 40]);
        assert!(read(&short, 1, Proto::Tcp).1.is_empty());
    }
}
