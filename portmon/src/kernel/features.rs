//! Kernel features portmon uses past what the preflight requires, each
//! tried here so that `portmon check` names what is missing and the fix.
//! Without them the programs still load; what portmon reports is smaller.

use std::{io, net::Ipv4Addr, os::fd::AsRawFd as _};

use super::{
    netns,
    sock_diag::{Dump, DumpError, Ports, SockDiag, TCP_BOUND_INACTIVE},
};
use portmon_common::Family;

/// A feature this kernel lacks, with what follows and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error(
        "SO_NETNS_COOKIE is missing (Linux 5.14): every namespace's socket inventory is \
         skipped; run Linux 5.14 or later"
    )]
    NetnsCookie(#[source] netns::NetnsError),
    #[error(
        "sock_diag answers no {what} dump, so the socket inventory is empty: load the \
         modules with `modprobe -a inet_diag {module}` (and list them in \
         /etc/modules-load.d/ to keep them)"
    )]
    Diag {
        what: &'static str,
        module: &'static str,
        #[source]
        source: DumpError,
    },
}

/// A feature whose absence only narrows what portmon reports.
#[derive(Debug, thiserror::Error)]
pub enum Limited {
    #[error(
        "sock_diag does not dump sockets bound and idle (Linux 6.7): the ephemeral pools' \
         fill leaves out ports held by bound sockets that neither listen nor connect"
    )]
    BoundInactive,
}

/// What a probe found.
#[derive(Debug)]
pub enum Found {
    Present,
    Limited(Limited),
    Missing(Missing),
}

/// Every feature tried, by the name `portmon check` prints.
pub fn probe() -> Vec<(&'static str, Found)> {
    let found = |outcome: Result<(), Missing>| outcome.map_or_else(Found::Missing, |()| Found::Present);
    let diag = |what, module, dump| {
        SockDiag::open()
            .map_err(DumpError::Io)
            .and_then(|mut diag| diag.dump(dump, 0, &mut Vec::new()))
            .map_err(|source| Missing::Diag { what, module, source })
    };
    // Listeners only (TCP_LISTEN, 10): the answer is small; that there is
    // one at all is what counts.
    let listeners = Dump::Tcp {
        states: 1 << 10,
        ports: Ports::All,
    };
    let tcp = diag("TCP", "tcp_diag", listeners);
    let bound = match (&tcp, dumps_bound_inactive()) {
        (Err(_), _) | (Ok(()), true) => Found::Present,
        (Ok(()), false) => Found::Limited(Limited::BoundInactive),
    };
    vec![
        (
            "netns cookie",
            found(netns::current_cookie().map(drop).map_err(Missing::NetnsCookie)),
        ),
        ("sock_diag tcp", found(tcp)),
        (
            "sock_diag udp",
            found(diag("UDP", "udp_diag", Dump::Udp(Family::Inet))),
        ),
        ("bound sockets", bound),
    ]
}

/// Whether sock_diag dumps sockets bound and neither listening nor
/// connected (`TCP_BOUND_INACTIVE`; older kernels ignore the state bit and
/// answer nothing): tried on such a socket on loopback, in the calling
/// thread's namespace.
pub fn dumps_bound_inactive() -> bool {
    let Ok(socket) = bound_tcp_socket() else {
        return false;
    };
    let Ok(port) = local_port(&socket) else {
        return false;
    };
    let dump = Dump::Tcp {
        states: TCP_BOUND_INACTIVE,
        ports: Ports::All,
    };
    let mut found = Vec::new();
    SockDiag::open()
        .map_err(DumpError::Io)
        .and_then(|mut diag| diag.dump(dump, 0, &mut found))
        .is_ok_and(|()| found.iter().any(|s| s.socket.local.port() == port))
}

/// A TCP socket bound to a port of the kernel's choice on 127.0.0.1.
fn bound_tcp_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    // SAFETY: addr is a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn local_port(socket: &std::os::fd::OwnedFd) -> io::Result<u16> {
    // SAFETY: as in bound_tcp_socket.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr and len are valid for writes of the sizes given.
    let rc = unsafe { libc::getsockname(socket.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}
