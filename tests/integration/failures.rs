//! Failed binds and connects reach user space once each, with their errno,
//! process and command.

use std::{
    io::ErrorKind,
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use portmon::failures::Errno;
use portmon_common::{Family, Op, Proto};
use portmon_tests::{attachable_programs, in_fresh_netns, serial, skipped, write_sysctl, Monitor, TEST_COMM};

use crate::counting::{raw_udp, raw_udp_connect};

const PORT: u16 = 15_301;

#[test]
fn a_second_bind_to_a_busy_port_is_one_eaddrinuse_with_pid_and_comm() {
    let _serial = serial();
    let mut monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let holder = TcpListener::bind(("127.0.0.1", PORT)).expect("first bind");
        let err = TcpListener::bind(("127.0.0.1", PORT)).expect_err("second bind must fail");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        let failures = monitor.failures_in(ns.cookie, 1);
        assert_eq!(failures.len(), 1, "{failures:#?}");
        let f = &failures[0];
        assert_eq!(
            (f.op, f.errno, f.proto, f.port),
            (Op::Bind, Errno::AddrInUse, Proto::Tcp, PORT)
        );
        assert_eq!((f.pid, f.comm.as_str()), (std::process::id(), TEST_COMM));
        assert!(f.inferred, "bind errno is inferred in user space");
        let held_by = f.holder.as_ref().expect("the process holding the port is named");
        // Named as `ss -p` names it: by its process's command, not by the
        // thread's that bound.
        let process = portmon::kernel::procfs::command_of(std::process::id());
        assert_eq!(
            (held_by.pid, held_by.comm.clone()),
            (std::process::id(), portmon::kernel::procfs::comm_text(&process))
        );
        drop(holder);
    });
    assert_eq!(monitor.health().events_dropped, 0);
}

#[test]
fn a_tcp_connect_with_no_local_port_left_is_one_eaddrnotavail() {
    let _serial = serial();
    let mut monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        write_sysctl("net/ipv4/ip_local_port_range", "40000 40009");
        let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("listen");
        let mut clients = Vec::new();
        let err = loop {
            match TcpStream::connect(("127.0.0.1", PORT)) {
                Ok(client) => clients.push(client),
                Err(err) => break err,
            }
            assert!(clients.len() <= 10, "more connects than local ports");
        };
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(
            clients.len(),
            10,
            "every port of the range is usable for one destination"
        );
        let failures = monitor.failures_in(ns.cookie, 1);
        assert_eq!(failures.len(), 1, "{failures:#?}");
        let f = &failures[0];
        assert_eq!(
            (f.op, f.errno, f.proto, f.port),
            (Op::Connect, Errno::AddrNotAvail, Proto::Tcp, PORT)
        );
        assert_eq!(
            (f.pid, f.comm.as_str(), f.inferred),
            (std::process::id(), TEST_COMM, false)
        );
        drop((clients, listener));
    });
}

#[test]
fn a_refused_connect_is_not_a_failure_of_portmon_s_kinds() {
    let _serial = serial();
    let mut monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        for _ in 0..3 {
            let err = TcpStream::connect(("127.0.0.1", PORT)).expect_err("nobody listens");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        }
        let v6 = TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, PORT)).expect_err("nobody listens");
        assert_eq!(v6.kind(), ErrorKind::ConnectionRefused);
        let failures = monitor.failures_in(ns.cookie, 1);
        assert!(failures.is_empty(), "refused connects reported: {failures:#?}");
    });
    assert_eq!(monitor.health().failures_seen, 0, "the kernel side saw a failure");
}

#[test]
fn udp_connect_and_bind_zero_with_no_port_left_fail_as_eagain_and_eaddrinuse() {
    let _serial = serial();
    let mut monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        write_sysctl("net/ipv4/ip_local_port_range", "40000 40009");
        let mut held = Vec::new();
        let err = loop {
            match UdpSocket::bind("127.0.0.1:0") {
                Ok(socket) => held.push(socket),
                Err(err) => break err,
            }
            assert!(held.len() <= 10, "more auto-binds than local ports");
        };
        assert_eq!(
            err.kind(),
            ErrorKind::AddrInUse,
            "bind(0) with the range used up: {err}"
        );
        assert_eq!(held.len(), 10);
        let err = raw_udp_connect([127, 0, 0, 1], PORT).expect_err("udp connect must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{err}");

        let failures = monitor.failures_in(ns.cookie, 2);
        let summary: Vec<(Op, Errno, Proto, u16)> = failures
            .iter()
            .map(|f| (f.op, f.errno, f.proto, f.port))
            .collect();
        assert_eq!(
            summary,
            [
                (Op::Bind, Errno::AddrInUse, Proto::Udp, 0),
                (Op::Connect, Errno::Again, Proto::Udp, PORT)
            ]
        );
        assert!(failures
            .iter()
            .all(|f| f.pid == std::process::id() && f.comm == TEST_COMM));
        drop(held);
    });
}

#[test]
fn udp_sendto_with_no_port_left_fails_as_one_eagain_per_family() {
    if !attachable_programs().contains(&portmon_common::program::SOCK_SEND_LENGTH) {
        return skipped("the kernel has no sock_send_length tracepoint (Linux 6.3)");
    }
    let _serial = serial();
    let mut monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        write_sysctl("net/ipv4/ip_local_port_range", "40000 40009");
        let held: Vec<UdpSocket> = (0..10)
            .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind 0"))
            .collect();
        for family in [Family::Inet, Family::Inet6] {
            let err = raw_udp(family, |fd, addr, len| {
                // SAFETY: a socket, a buffer and an address of ours.
                let sent = unsafe { libc::sendto(fd, b"x".as_ptr().cast(), 1, 0, addr, len) };
                if sent == 1 {
                    0
                } else {
                    -1
                }
            })
            .expect_err("sendto must fail");
            assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{family:?}: {err}");
        }
        let failures = monitor.failures_in(ns.cookie, 2);
        let summary: Vec<(Op, Errno, Proto, Family)> = failures
            .iter()
            .map(|f| (f.op, f.errno, f.proto, f.family))
            .collect();
        assert_eq!(
            summary,
            [
                (Op::Send, Errno::Again, Proto::Udp, Family::Inet),
                (Op::Send, Errno::Again, Proto::Udp, Family::Inet6)
            ]
        );
        assert!(failures
            .iter()
            .all(|f| f.pid == std::process::id() && f.comm == TEST_COMM && f.exhaustion == Some(Op::Bind)));
        drop(held);
    });
}

/// A `SOCK_STREAM` socket of `protocol` (`IPPROTO_MPTCP`, `IPPROTO_SCTP`).
fn stream_socket(protocol: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a
    // descriptor owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// bind(2) or connect(2) of `socket` to 127.0.0.1:`port`.
fn to_loopback(
    socket: &OwnedFd,
    port: u16,
    call: unsafe extern "C" fn(i32, *const libc::sockaddr, libc::socklen_t) -> i32,
) -> std::io::Result<()> {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = port.to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    // SAFETY: the socket is ours; the address is a sockaddr_in of its size.
    let rc = unsafe {
        call(
            socket.as_raw_fd(),
            (&raw const sin).cast(),
            std::mem::size_of_val(&sin) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A socket of `protocol` connected to 127.0.0.1:`port`: the connect's outcome.
fn connect_with(protocol: i32, port: u16) -> std::io::Result<OwnedFd> {
    let socket = stream_socket(protocol)?;
    to_loopback(&socket, port, libc::connect)?;
    Ok(socket)
}

#[test]
fn mptcp_connects_are_no_exhaustion_and_count_once() {
    if !std::path::Path::new("/proc/sys/net/mptcp").exists() {
        return skipped("the kernel has no MPTCP (no /proc/sys/net/mptcp)");
    }
    let _serial = serial();
    let mut monitor = Monitor::attach();
    let seen = monitor.health().failures_seen;
    in_fresh_netns(|ns| {
        // Refused: the MPTCP socket goes SYN_SENT → CLOSE without a port of
        // its own, as a TCP connect that found none would.
        let err = connect_with(libc::IPPROTO_MPTCP, PORT).expect_err("nobody listens");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        // Accepted (by a plain TCP listener: the subflow falls back to TCP).
        let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("listen");
        let client = connect_with(libc::IPPROTO_MPTCP, PORT).expect("mptcp connect");
        let _server = listener.accept().expect("accept");
        let failures = monitor.failures_in(ns.cookie, 1);
        assert!(failures.is_empty(), "{failures:#?}");
        let remote = monitor.stats(
            ns.cookie,
            Proto::Tcp,
            Family::Inet,
            portmon_common::Role::Remote,
            PORT,
        );
        assert_eq!(remote.connects, 1, "the subflow's connection, once");
        drop(client);
    });
    assert_eq!(
        monitor.health().failures_seen,
        seen,
        "the kernel side saw a failure"
    );
}

/// SCTP's sockets move through TCP's states (`inet_sk_set_state`) and
/// pass the same bind and connect hooks, with ports of their own protocol.
#[test]
fn sctp_sockets_are_no_exhaustion_and_count_nothing() {
    let absent = |err: &std::io::Error| {
        matches!(
            err.raw_os_error(),
            Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT)
        )
    };
    match stream_socket(libc::IPPROTO_SCTP) {
        Err(err) if absent(&err) => return skipped(&format!("the kernel has no SCTP: {err}")),
        other => drop(other.expect("an SCTP socket")),
    }
    let _serial = serial();
    let mut monitor = Monitor::attach();
    let seen = monitor.health().failures_seen;
    in_fresh_netns(|ns| {
        let listener = stream_socket(libc::IPPROTO_SCTP).expect("socket");
        to_loopback(&listener, PORT, libc::bind).expect("bind");
        // SAFETY: listen(2) on our socket.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 8) }, 0, "listen");
        let busy = stream_socket(libc::IPPROTO_SCTP).expect("socket");
        let err = to_loopback(&busy, PORT, libc::bind).expect_err("the port is taken");
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
        let client = connect_with(libc::IPPROTO_SCTP, PORT).expect("an association");
        let err = connect_with(libc::IPPROTO_SCTP, PORT + 1).expect_err("nobody listens");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        drop((client, busy, listener));
        let failures = monitor.failures_in(ns.cookie, 1);
        assert!(failures.is_empty(), "{failures:#?}");
        for port in [PORT, PORT + 1] {
            for role in [portmon_common::Role::Local, portmon_common::Role::Remote] {
                let stats = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, role, port);
                assert_eq!(
                    (stats.binds, stats.listens, stats.connects),
                    (0, 0, 0),
                    "SCTP counted as TCP on port {port}, {role:?}"
                );
            }
        }
    });
    assert_eq!(
        monitor.health().failures_seen,
        seen,
        "the kernel side saw a failure"
    );
}

#[test]
fn a_privileged_port_without_the_capability_is_eacces() {
    let _serial = serial();
    let mut monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let child = PrivilegedBindChild::spawn(80);
        assert_eq!(child.errno, libc::EACCES, "bind(80) without CAP_NET_BIND_SERVICE");
        let failures = monitor.failures_in(ns.cookie, 1);
        assert_eq!(failures.len(), 1, "{failures:#?}");
        let f = &failures[0];
        assert_eq!(
            (f.op, f.errno, f.port, f.pid),
            (Op::Bind, Errno::Access, 80, child.pid)
        );
        child.finish();
    });
}

/// A child process, without CAP_NET_BIND_SERVICE, that tried to bind a port
/// and waits to be told to exit (so portmon can still see its capabilities).
struct PrivilegedBindChild {
    pid: u32,
    errno: i32,
    release: i32,
}

impl PrivilegedBindChild {
    fn spawn(port: u16) -> Self {
        let mut report = [0i32; 2];
        let mut release = [0i32; 2];
        // SAFETY: pipe/fork; the child only makes raw system calls and _exits.
        unsafe {
            assert_eq!(libc::pipe(report.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(release.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                drop_net_bind_service();
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = port.to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
                let rc = libc::bind(
                    fd,
                    (&raw const sin).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                let errno: i32 = if rc == 0 { 0 } else { *libc::__errno_location() };
                libc::close(fd);
                libc::write(report[1], (&raw const errno).cast(), 4);
                let mut byte = 0u8;
                libc::read(release[0], (&raw mut byte).cast(), 1);
                libc::_exit(0);
            }
            let mut errno = -1i32;
            assert_eq!(
                libc::read(report[0], (&raw mut errno).cast(), 4),
                4,
                "child report"
            );
            Self {
                pid: pid as u32,
                errno,
                release: release[1],
            }
        }
    }

    fn finish(self) {
        // SAFETY: our pipe and our child.
        unsafe {
            libc::write(self.release, [1u8].as_ptr().cast(), 1);
            let mut status = 0;
            libc::waitpid(self.pid as i32, &mut status, 0);
        }
    }
}

/// Clears CAP_NET_BIND_SERVICE from this (single-threaded, forked) process.
///
/// # Safety
/// Raw capget/capset system calls on local buffers.
unsafe fn drop_net_bind_service() {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_BIND_SERVICE: u32 = 10;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data are valid for the kernel to read and write.
    unsafe {
        libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr());
        data[0].effective &= !(1 << CAP_NET_BIND_SERVICE);
        data[0].permitted &= !(1 << CAP_NET_BIND_SERVICE);
        libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr());
    }
}
