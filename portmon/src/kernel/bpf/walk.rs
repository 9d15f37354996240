//! The walk of the host's established-socket table (portmon-common's
//! `walk` module): loaded with the other programs, read at each snapshot.
//! One read lists the TCP connections, TIME_WAIT and request sockets of
//! every namespace that shares the host's table, where `sock_diag` would
//! walk that whole table once per namespace.
//!
//! The iterator is a link over the `WALK_CHUNKS` array; each read is a new
//! iterator made from the link (`BPF_ITER_CREATE`), which needs no
//! capability, so the daemon reads it after it has given up its own.

use std::{
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::{
    maps::Map,
    programs::{Iter, ProgramError},
    Ebpf,
};
use portmon_common::{
    map, program, tcp_state,
    walk::{kind, sock_common, Record, WalkLayout, BUCKETS_PER_CHUNK, MAX_CHUNKS},
    Family, Proto,
};

use super::btf::{Btf, BtfError};
use crate::kernel::sock_diag::{NsSocket, Socket, SocketState};

/// Where the host's table size is (Linux 6.1); negative in a namespace
/// that shares another's table.
const EHASH_ENTRIES: &str = "/proc/sys/net/ipv4/tcp_ehash_entries";
/// The bit that marks a cookie portmon made for a socket nothing has asked
/// the kernel's cookie of: the kernel's count from 1 never reaches it.
const MADE_COOKIE: u64 = 1 << 63;

/// `enum bpf_cmd` and `enum bpf_attach_type` (include/uapi/linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// Why the walk is not used on this host; each namespace's dump then walks
/// the table itself, as before.
#[derive(Debug, thiserror::Error)]
pub enum WalkSetupError {
    #[error("cannot read the host's established-table size ({EHASH_ENTRIES}, Linux 6.1)")]
    Entries(#[source] io::Error),
    #[error("the established table has {0} buckets, not a power of two of at least {BUCKETS_PER_CHUNK}")]
    Buckets(i64),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("struct sock_common.{member} is at byte {found}, not {expected}")]
    Layout {
        member: &'static str,
        found: u32,
        expected: usize,
    },
    #[error("the kernel object has no walk program or map")]
    Missing,
    #[error("the kernel rejected the walk program")]
    Load(#[source] ProgramError),
    #[error("cannot read the kernel's BTF for the iterator")]
    KernelBtf(#[source] aya::BtfError),
    #[error("the kernel refused the walk's iterator link")]
    Link(#[source] io::Error),
    #[error("established-walk is false")]
    Off,
}

/// Why one walk gave nothing usable; the snapshot then dumps instead.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot start a walk of the established-socket table")]
    Create(#[source] io::Error),
    #[error("reading the walk failed")]
    Read(#[source] io::Error),
    #[error("a bucket of the established-socket table was too long or changed under the walk")]
    Incomplete,
    #[error("portmon's namespace has an established-socket table of its own")]
    NoTable,
    #[error("the walk ended inside a record")]
    Malformed,
}

/// The offsets the walk reads, or why this kernel's layout is not the one
/// it takes as constants.
pub fn layout(btf: &Btf) -> Result<WalkLayout, WalkSetupError> {
    for (member, expected) in [
        ("skc_rcv_saddr", sock_common::SKC_RCV_SADDR),
        ("skc_state", sock_common::SKC_STATE),
        ("skc_net", sock_common::SKC_NET),
        ("skc_v6_daddr", sock_common::SKC_V6_DADDR),
        ("skc_v6_rcv_saddr", sock_common::SKC_V6_RCV_SADDR),
        ("skc_cookie", sock_common::SKC_COOKIE),
        ("skc_nulls_node", sock_common::SKC_NULLS_NODE),
    ] {
        let found = btf.member_offset("sock_common", member)?;
        if found as usize != expected {
            return Err(WalkSetupError::Layout {
                member,
                found,
                expected,
            });
        }
    }
    let socket = btf.member_offset("socket_alloc", "socket")?;
    let inode = btf.member_offset("socket_alloc", "vfs_inode")?;
    let socket_ino = inode
        .checked_sub(socket)
        .and_then(|gap| gap.checked_add(btf.member_offset("inode", "i_ino").ok()?))
        .ok_or(WalkSetupError::Layout {
            member: "socket_alloc.vfs_inode",
            found: inode,
            expected: socket as usize,
        })?;
    Ok(WalkLayout {
        task_nsproxy: btf.member_offset("task_struct", "nsproxy")?,
        nsproxy_net_ns: btf.member_offset("nsproxy", "net_ns")?,
        net_hashinfo: btf.path_offset("net", &["ipv4", "tcp_death_row", "hashinfo"])?,
        net_cookie: btf.member_offset("net", "net_cookie")?,
        hashinfo_ehash: btf.member_offset("inet_hashinfo", "ehash")?,
        hashinfo_ehash_mask: btf.member_offset("inet_hashinfo", "ehash_mask")?,
        hashinfo_pernet: btf.member_offset("inet_hashinfo", "pernet")?,
        sk_socket: btf.member_offset("sock", "sk_socket")?,
        sk_uid: btf.member_offset("sock", "sk_uid")?,
        socket_ino,
        tw_substate: btf.member_offset("inet_timewait_sock", "tw_substate")?,
        _pad: 0,
    })
}

/// Elements of `WALK_CHUNKS` for the host's table.
pub fn chunks() -> Result<u32, WalkSetupError> {
    let text = std::fs::read_to_string(EHASH_ENTRIES).map_err(WalkSetupError::Entries)?;
    let entries: i64 = text
        .trim()
        .parse()
        .map_err(|_| WalkSetupError::Entries(io::Error::other(format!("not a number: {:?}", text.trim()))))?;
    let usable = entries >= i64::from(BUCKETS_PER_CHUNK)
        && (entries as u64).is_power_of_two()
        && entries / i64::from(BUCKETS_PER_CHUNK) <= i64::from(MAX_CHUNKS);
    if !usable {
        return Err(WalkSetupError::Buckets(entries));
    }
    Ok((entries / i64::from(BUCKETS_PER_CHUNK)) as u32)
}

/// A walk ready to be read: its iterator link.
#[derive(Debug)]
pub struct EhashWalk {
    link: OwnedFd,
    buffer: Vec<u8>,
}

impl EhashWalk {
    /// Loads the walk program of a loaded object and links it to its
    /// array.
    pub fn attach(ebpf: &mut Ebpf) -> Result<Self, WalkSetupError> {
        let btf = aya::Btf::from_sys_fs().map_err(WalkSetupError::KernelBtf)?;
        let map_fd = match ebpf.map(map::WALK_CHUNKS) {
            Some(Map::Array(data)) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(WalkSetupError::Link)?,
            _ => return Err(WalkSetupError::Missing),
        };
        let iter: &mut Iter = ebpf
            .program_mut(program::WALK_ESTABLISHED)
            .ok_or(WalkSetupError::Missing)?
            .try_into()
            .map_err(|_| WalkSetupError::Missing)?;
        iter.load("bpf_map_elem", &btf).map_err(WalkSetupError::Load)?;
        let prog_fd = iter.fd().map_err(WalkSetupError::Load)?;
        let link =
            link_create(prog_fd.as_fd().as_raw_fd(), map_fd.as_raw_fd()).map_err(WalkSetupError::Link)?;
        Ok(Self {
            link,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Appends every socket of the host's shared table to `out`; on an
    /// error nothing is appended.
    pub fn read(&mut self, out: &mut Vec<NsSocket>) -> Result<(), WalkError> {
        let kept = out.len();
        let result = self.read_into(out);
        if result.is_err() {
            out.truncate(kept);
        }
        result
    }

    fn read_into(&mut self, out: &mut Vec<NsSocket>) -> Result<(), WalkError> {
        let mut file = std::fs::File::from(iter_create(self.link.as_raw_fd()).map_err(WalkError::Create)?);
        let mut filled = 0;
        loop {
            let n = match file.read(&mut self.buffer[filled..]) {
                Ok(0) if filled == 0 => return Ok(()),
                Ok(0) => return Err(WalkError::Malformed),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(WalkError::Read(err)),
            };
            filled += n;
            let whole = filled - filled % RECORD;
            decode(&self.buffer[..whole], out)?;
            self.buffer.copy_within(whole..filled, 0);
            filled -= whole;
        }
    }
}

const RECORD: usize = std::mem::size_of::<Record>();

/// Turns whole records into sockets.
pub(crate) fn decode(data: &[u8], out: &mut Vec<NsSocket>) -> Result<(), WalkError> {
    for raw in data.chunks_exact(RECORD) {
        // SAFETY: `Record` is plain integers and arrays, any bytes are one,
        // and the chunk is exactly its size; read_unaligned needs no
        // alignment.
        let record: Record = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        match record.kind {
            kind::SOCKET => {
                if let Some(socket) = socket(&record) {
                    out.push(socket);
                }
            }
            kind::NO_TABLE => return Err(WalkError::NoTable),
            _ => return Err(WalkError::Incomplete),
        }
    }
    Ok(())
}

/// The socket a record describes, as a `sock_diag` dump would: a request
/// socket shows as SYN_RECV, a TIME_WAIT one in its sub-state.
fn socket(r: &Record) -> Option<NsSocket> {
    let family = match i32::from(r.family) {
        libc::AF_INET => Family::Inet,
        libc::AF_INET6 => Family::Inet6,
        _ => return None,
    };
    let state = match r.state {
        tcp_state::NEW_SYN_RECV => SocketState::SynRecv,
        state => SocketState::from_kernel(state)?,
    };
    let address = |bytes: [u8; 16]| match family {
        Family::Inet => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::from(bytes)),
    };
    let local = SocketAddr::new(address(r.local), r.local_port);
    let remote = SocketAddr::new(address(r.remote), r.remote_port);
    let cookie = if r.cookie != 0 {
        r.cookie
    } else {
        made_cookie(r.netns, family, &local, &remote)
    };
    Some(NsSocket {
        netns: r.netns,
        socket: Socket {
            proto: Proto::Tcp,
            family,
            state,
            local,
            remote,
            cookie,
            uid: r.uid,
            inode: r.inode,
        },
    })
}

/// A cookie for a socket whose own the kernel has not made yet (nothing
/// asked for it): the same for it at every walk, as its addresses are.
fn made_cookie(netns: u64, family: Family, local: &SocketAddr, remote: &SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (netns, family.raw(), local, remote).hash(&mut hasher);
    hasher.finish() | MADE_COOKIE
}

/// `BPF_LINK_CREATE` of an iterator over the map `map_fd`; aya's
/// `Iter::attach` links iterators that take no map only.
fn link_create(prog_fd: i32, map_fd: i32) -> io::Result<OwnedFd> {
    // union bpf_iter_link_info: { __u32 map_fd; } map.
    let info = [map_fd as u32];
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags,
    // then iter_info (a pointer) and iter_info_len.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TRACE_ITER.to_ne_bytes());
    attr[16..24].copy_from_slice(&(info.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&4u32.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// `BPF_ITER_CREATE`: a new walk of the link.
fn iter_create(link_fd: i32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(link_fd as u32).to_ne_bytes());
    bpf(BPF_ITER_CREATE, &mut attr)
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: bpf(2) with a zeroed attribute union of the size passed; the
    // pointers in it outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, family: u8, state: u8, cookie: u64) -> Vec<u8> {
        let mut r = Record {
            netns: 7,
            cookie,
            inode: 42,
            uid: 1000,
            local_port: 40_000,
            remote_port: 443,
            family,
            state,
            ..Record::zeroed(kind)
        };
        r.local[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.remote[..4].copy_from_slice(&[10, 0, 0, 2]);
        // SAFETY: plain data of exactly RECORD bytes.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&r).cast::<u8>(), RECORD) }.to_vec()
    }

    #[test]
    fn records_read_as_a_dump_shows_them() {
        let data = [
            record(kind::SOCKET, libc::AF_INET as u8, tcp_state::ESTABLISHED, 9),
            record(kind::SOCKET, libc::AF_INET as u8, tcp_state::NEW_SYN_RECV, 0),
            // Not a family portmon knows: left out.
            record(kind::SOCKET, 1, tcp_state::ESTABLISHED, 3),
        ]
        .concat();
        let mut out = Vec::new();
        decode(&data, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].netns, 7);
        assert_eq!(out[0].socket.cookie, 9);
        assert_eq!(out[0].socket.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(out[0].socket.remote, "10.0.0.2:443".parse().unwrap());
        assert_eq!(out[0].socket.state, SocketState::Established);
        assert_eq!((out[0].socket.inode, out[0].socket.uid), (42, 1000));
        assert_eq!(out[1].socket.state, SocketState::SynRecv);
        // A cookie of its own, the same at the next walk.
        assert_ne!(out[1].socket.cookie & MADE_COOKIE, 0);
        let mut again = Vec::new();
        decode(&data, &mut again).unwrap();
        assert_eq!(again[1].socket.cookie, out[1].socket.cookie);
    }

    #[test]
    fn a_marker_fails_the_walk() {
        let mut out = Vec::new();
        let overflow = record(kind::OVERFLOW, 0, 0, 0);
        assert!(matches!(decode(&overflow, &mut out), Err(WalkError::Incomplete)));
        let none = record(kind::NO_TABLE, 0, 0, 0);
        assert!(matches!(decode(&none, &mut out), Err(WalkError::NoTable)));
    }
}
