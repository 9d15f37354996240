//! `storm-worker SECONDS`: fails binds as fast as it can for SECONDS, in
//! whatever network namespace it is started in, and prints how many failed.
//! Half go to a port a socket of its own holds (EADDRINUSE), half to an
//! address the namespace does not have (EADDRNOTAVAIL).
//!
//! Compiled, because an interpreter spends most of each attempt outside
//! the kernel: the storm test wants the kernel programs' hot path at its
//! busiest.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// The port the worker holds, and the address it lacks.
const HELD_PORT: u16 = 5000;
const ABSENT: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
/// Attempts on one socket before it is closed and another opened: a failed
/// bind leaves the socket unbound, so it can fail again, and the kernel
/// programs settle each failure at the socket's next bind or its release.
const ATTEMPTS_PER_SOCKET: u32 = 64;

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a
    // descriptor this process owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Brings up loopback: a namespace without it has no local routing table,
/// and the kernel then takes any address as one it may bind
/// (`__inet_dev_addr_type`, net/ipv4/fib_frontend.c, answers RTN_BROADCAST).
fn loopback_up() -> io::Result<()> {
    let socket = {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    // SAFETY: an all-zero ifreq is valid; the name fits with its NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() {
    let seconds: f64 = match std::env::args().nth(1).map(|s| s.parse()) {
        Some(Ok(seconds)) => seconds,
        _ => {
            eprintln!("usage: storm-worker SECONDS");
            std::process::exit(64);
        }
    };
    if let Err(err) = loopback_up() {
        eprintln!("storm-worker: cannot bring up loopback (run it in a network namespace of its own, with CAP_NET_ADMIN there): {err}");
        std::process::exit(1);
    }
    let _held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, HELD_PORT)).unwrap_or_else(|err| {
        eprintln!("storm-worker: cannot hold port {HELD_PORT}: {err}");
        std::process::exit(1);
    });
    let targets = [
        sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, HELD_PORT)),
        sockaddr(SocketAddrV4::new(ABSENT, 6000)),
    ];
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut failed, mut bound) = (0u64, 0u64);
    while Instant::now() < end {
        let socket = match tcp_socket() {
            Ok(socket) => socket,
            Err(err) => {
                eprintln!("storm-worker: socket: {err}");
                std::process::exit(1);
            }
        };
        for i in 0..ATTEMPTS_PER_SOCKET {
            let target = &targets[(i % 2) as usize];
            // SAFETY: bind(2) on our socket with a valid sockaddr_in of its size.
            let rc = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (target as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                // The namespace has the address after all: this socket is spent.
                bound += 1;
                break;
            }
            failed += 1;
        }
    }
    println!("{failed} failed {bound} bound");
}
