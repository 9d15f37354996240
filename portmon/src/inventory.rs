//! The live inventory: every TCP and UDP socket of a network namespace, from
//! a netlink `sock_diag` dump (what `ss` reads), so counts match `ss`
//! exactly, sockets older than portmon and TIME_WAIT ones included.
//!
//! A netlink socket belongs to the namespace it was created in, so portmon
//! opens one per namespace (inside it, once) and dumps through it from any
//! thread afterwards.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use portmon_common::{Family, Proto};
use serde::Serialize;

use crate::{
    ephemeral::{PoolSettings, PoolSysctls},
    netns::{self, Namespaces, Netns},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Every TCP state, as `ss -a` asks (`SS_ALL`, bits 0–12), and bit 13,
/// `TCP_BOUND_INACTIVE` (include/net/tcp_states.h): sockets bound and
/// neither listening nor connected, which hold a port all the same. Linux
/// dumps them since 6.7 (as CLOSE); older kernels ignore the bit.
const ALL_STATES: u32 = (1 << 14) - 1;
const RECV_BUFFER: usize = 256 * 1024;

/// A TCP state, or for UDP the two `ss` shows (`UNCONN` is CLOSE,
/// a connected UDP socket is ESTABLISHED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// TCP only: bound, neither listening nor connected.
    Bound,
}

impl SocketState {
    /// Every state, in label order.
    pub const ALL: &'static [SocketState] = &[
        SocketState::Bound,
        SocketState::Close,
        SocketState::CloseWait,
        SocketState::Closing,
        SocketState::Established,
        SocketState::FinWait1,
        SocketState::FinWait2,
        SocketState::LastAck,
        SocketState::Listen,
        SocketState::NewSynRecv,
        SocketState::SynRecv,
        SocketState::SynSent,
        SocketState::TimeWait,
    ];

    /// The kernel's number (include/net/tcp_states.h).
    pub fn from_kernel(state: u8) -> Option<Self> {
        Some(match state {
            1 => SocketState::Established,
            2 => SocketState::SynSent,
            3 => SocketState::SynRecv,
            4 => SocketState::FinWait1,
            5 => SocketState::FinWait2,
            6 => SocketState::TimeWait,
            7 => SocketState::Close,
            8 => SocketState::CloseWait,
            9 => SocketState::LastAck,
            10 => SocketState::Listen,
            11 => SocketState::Closing,
            12 => SocketState::NewSynRecv,
            _ => return None,
        })
    }

    /// The label used in metrics and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            SocketState::Established => "established",
            SocketState::SynSent => "syn_sent",
            SocketState::SynRecv => "syn_recv",
            SocketState::FinWait1 => "fin_wait1",
            SocketState::FinWait2 => "fin_wait2",
            SocketState::TimeWait => "time_wait",
            SocketState::Close => "close",
            SocketState::CloseWait => "close_wait",
            SocketState::LastAck => "last_ack",
            SocketState::Listen => "listen",
            SocketState::Closing => "closing",
            SocketState::NewSynRecv => "new_syn_recv",
            SocketState::Bound => "bound",
        }
    }
}

/// One socket holding (or having held, in TIME_WAIT) a local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub proto: Proto,
    pub family: Family,
    pub state: SocketState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket cookie: the same number the kernel programs see.
    pub cookie: u64,
    pub uid: u32,
    pub inode: u32,
}

/// A socket and the namespace it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NsSocket {
    /// Network namespace cookie.
    pub netns: u64,
    #[serde(flatten)]
    pub socket: Socket,
}

/// Every socket of every namespace on the host, as of one moment, and
/// each namespace's ephemeral port settings.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sockets: Vec<NsSocket>,
    /// Ephemeral pool settings, by namespace cookie.
    pub pools: HashMap<u64, PoolSettings>,
    /// Namespaces that could not be read, with the reason.
    pub errors: Vec<(String, String)>,
}

/// What portmon keeps open in one namespace: opened inside it once, read
/// from any thread afterwards.
#[derive(Debug)]
struct NetnsHandles {
    diag: SockDiag,
    sysctls: Option<PoolSysctls>,
}

impl NetnsHandles {
    /// Opens them in the calling thread's namespace.
    fn open() -> Result<Self, InventoryError> {
        let diag = SockDiag::open()?;
        let sysctls = PoolSysctls::open()
            .inspect_err(|err| tracing::debug!("no ephemeral port sysctls: {err}"))
            .ok();
        Ok(Self { diag, sysctls })
    }
}

/// Keeps one sock_diag socket per namespace and takes snapshots through
/// them. Sockets of namespaces that disappear are closed at the next scan,
/// so portmon does not keep a dead namespace alive.
#[derive(Debug, Default)]
pub struct Inventory {
    namespaces: Namespaces,
    open: HashMap<u64, NetnsHandles>,
}

impl Inventory {
    /// An inventory of every namespace found now.
    pub fn scan() -> Self {
        let mut inventory = Self::default();
        inventory.rescan();
        inventory
    }

    /// An inventory of the calling thread's namespace only (no privileges
    /// needed beyond those of a plain `ss`).
    pub fn current() -> Result<Self, InventoryError> {
        let cookie =
            netns::current_cookie().map_err(|e| InventoryError::Open(io::Error::other(e.to_string())))?;
        let mut inventory = Self::default();
        inventory.open.insert(cookie, NetnsHandles::open()?);
        Ok(inventory)
    }

    /// Finds namespaces again: opens sockets for new ones, closes those of
    /// gone ones.
    pub fn rescan(&mut self) {
        self.namespaces.rescan();
        let present: Vec<Netns> = self.namespaces.iter().cloned().collect();
        self.open
            .retain(|cookie, _| present.iter().any(|n| n.cookie == *cookie));
        for ns in present {
            if self.open.contains_key(&ns.cookie) {
                continue;
            }
            match netns::run_in(&ns.path, NetnsHandles::open) {
                Ok(Ok(handles)) => {
                    self.open.insert(ns.cookie, handles);
                }
                Ok(Err(err)) => tracing::debug!(netns = %ns.name, "no sock_diag socket: {err}"),
                Err(err) => tracing::debug!(netns = %ns.name, "cannot enter: {err}"),
            }
        }
    }

    /// The namespaces known, by cookie.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// Every socket of every namespace known, and their pool settings.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut sockets = Vec::new();
        for (&cookie, handles) in &mut self.open {
            sockets.clear();
            match handles.diag.dump_into(&mut sockets) {
                Ok(()) => snapshot.sockets.extend(sockets.iter().map(|&socket| NsSocket {
                    netns: cookie,
                    socket,
                })),
                Err(err) => snapshot
                    .errors
                    .push((cookie.to_string(), crate::loader::error_line(&err))),
            }
            match handles.sysctls.as_ref().map(PoolSysctls::read) {
                Some(Ok(settings)) => {
                    snapshot.pools.insert(cookie, settings);
                }
                Some(Err(err)) => snapshot
                    .errors
                    .push((cookie.to_string(), crate::loader::error_line(&err))),
                None => {}
            }
        }
        snapshot
    }
}

impl Socket {
    /// The state as `ss` names it: `unconn` for an unconnected UDP socket,
    /// the TCP state's name otherwise.
    pub fn state_label(&self) -> &'static str {
        match (self.proto, self.state) {
            (Proto::Udp, SocketState::Close) => "unconn",
            (_, state) => state.label(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot open a sock_diag netlink socket")]
    Open(#[source] io::Error),
    #[error("sock_diag dump of {proto} over {family} failed")]
    Dump {
        proto: Proto,
        family: Family,
        #[source]
        source: io::Error,
    },
}

/// A sock_diag socket bound to the namespace it was opened in.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buffer: Vec<u8>,
}

impl SockDiag {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<Self, InventoryError> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(InventoryError::Open(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            seq: 0,
            buffer: vec![0; RECV_BUFFER],
        })
    }

    /// Every TCP and UDP socket of the namespace, appended to `out`.
    pub fn dump_into(&mut self, out: &mut Vec<Socket>) -> Result<(), InventoryError> {
        for proto in [Proto::Tcp, Proto::Udp] {
            for family in [Family::Inet, Family::Inet6] {
                self.dump_one(proto, family, out)
                    .map_err(|source| InventoryError::Dump {
                        proto,
                        family,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    fn dump_one(&mut self, proto: Proto, family: Family, out: &mut Vec<Socket>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = request(self.seq, family.raw(), proto.raw());
        // SAFETY: sending a buffer we own to the kernel (pid 0).
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
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
        loop {
            // SAFETY: receiving into a buffer we own, of the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            match parse_messages(&self.buffer[..n as usize], self.seq, proto, family, out)? {
                Parsed::More => continue,
                Parsed::Done => return Ok(()),
            }
        }
    }
}

/// A SOCK_DIAG_BY_FAMILY dump request (nlmsghdr + inet_diag_req_v2).
fn request(seq: u32, family: u8, protocol: u8) -> Vec<u8> {
    const HEADER: usize = 16;
    const BODY: usize = 56;
    let mut buf = Vec::with_capacity(HEADER + BODY);
    buf.extend_from_slice(&((HEADER + BODY) as u32).to_ne_bytes());
    buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    buf.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, protocol, 0, 0]);
    buf.extend_from_slice(&ALL_STATES.to_ne_bytes());
    buf.resize(HEADER + BODY, 0); // inet_diag_sockid: all wildcards
    buf
}

enum Parsed {
    More,
    Done,
}

/// Walks the netlink messages of one datagram.
fn parse_messages(
    mut data: &[u8],
    seq: u32,
    proto: Proto,
    family: Family,
    out: &mut Vec<Socket>,
) -> io::Result<Parsed> {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let msg_seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if len < 16 || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &data[16..len];
        if msg_seq == seq {
            match i32::from(kind) {
                libc::NLMSG_DONE => return Ok(Parsed::Done),
                libc::NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ if kind == SOCK_DIAG_BY_FAMILY => {
                    if let Some(socket) = parse_socket(body, proto, family) {
                        out.push(socket);
                    }
                }
                _ => {}
            }
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(Parsed::More)
}

/// One `struct inet_diag_msg` (include/uapi/linux/inet_diag.h).
fn parse_socket(body: &[u8], proto: Proto, family: Family) -> Option<Socket> {
    if body.len() < 72 {
        return None;
    }
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
    let u32_at = |at: usize| u32::from_ne_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    // id: sport@4 dport@6 src@8 dst@24 if@40 cookie@44; then expires@52
    // rqueue@56 wqueue@60 uid@64 inode@68.
    Some(Socket {
        proto,
        family,
        state,
        local: SocketAddr::new(addr(8), port(4)),
        remote: SocketAddr::new(addr(24), port(6)),
        cookie: u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32),
        uid: u32_at(64),
        inode: u32_at(68),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u32, kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(body);
        m
    }

    fn diag_msg(state: u8, sport: u16, dport: u16, cookie: u64) -> Vec<u8> {
        let mut b = vec![0u8; 72];
        b[0] = 2;
        b[1] = state;
        b[4..6].copy_from_slice(&sport.to_be_bytes());
        b[6..8].copy_from_slice(&dport.to_be_bytes());
        b[8..12].copy_from_slice(&[127, 0, 0, 1]);
        b[24..28].copy_from_slice(&[10, 0, 0, 2]);
        b[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        b[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b
    }

    #[test]
    fn parses_sockets_and_done() {
        let mut data = message(7, SOCK_DIAG_BY_FAMILY, &diag_msg(10, 80, 0, 1 << 40 | 5));
        data.extend(message(7, SOCK_DIAG_BY_FAMILY, &diag_msg(6, 40000, 443, 9)));
        data.extend(message(6, SOCK_DIAG_BY_FAMILY, &diag_msg(1, 1, 1, 1))); // another dump's
        let mut out = Vec::new();
        assert!(matches!(
            parse_messages(&data, 7, Proto::Tcp, Family::Inet, &mut out),
            Ok(Parsed::More)
        ));
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].state, out[0].local.port(), out[0].cookie),
            (SocketState::Listen, 80, 1 << 40 | 5)
        );
        assert_eq!(out[1].remote, "10.0.0.2:443".parse().unwrap());
        assert_eq!(out[1].uid, 1000);
        let done = message(7, libc::NLMSG_DONE as u16, &[0; 4]);
        assert!(matches!(
            parse_messages(&done, 7, Proto::Tcp, Family::Inet, &mut out),
            Ok(Parsed::Done)
        ));
    }

    #[test]
    fn netlink_errors_and_garbage_are_errors_not_panics() {
        let error = message(3, libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        let err = parse_messages(&error, 3, Proto::Udp, Family::Inet6, &mut Vec::new())
            .err()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        for garbage in [vec![0xff; 20], vec![1, 0, 0, 0], vec![16, 0, 0, 0, 20, 0]] {
            let _ = parse_messages(&garbage, 1, Proto::Tcp, Family::Inet, &mut Vec::new());
        }
        assert!(parse_socket(&[0; 10], Proto::Tcp, Family::Inet).is_none());
    }
}
