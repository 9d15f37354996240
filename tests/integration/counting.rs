//! Successful binds, listens, connects and closes are counted exactly.

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use portmon::kernel::bpf::LoadOptions;
use portmon_common::{Family, Proto, Role};
use portmon_tests::{in_fresh_netns, serial, Monitor};

/// A port no other test uses, so a failure names its test.
const PORT: u16 = 15_201;

#[test]
fn every_bind_on_a_port_is_counted() {
    let _serial = serial();
    let monitor = Monitor::attach();
    let binds = 7;
    in_fresh_netns(|ns| {
        for _ in 0..binds {
            let socket = TcpListener::bind(("127.0.0.1", PORT)).expect("bind");
            drop(socket);
        }
        let stats = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Local, PORT);
        assert_eq!(stats.binds, binds, "binds on {PORT}");
        assert_eq!(stats.listens, binds, "listens on {PORT}");
        assert_eq!(stats.live, 0, "closed sockets still counted live");
    });
}

#[test]
fn thousands_of_ports_read_back_exactly_across_batches() {
    let _serial = serial();
    let monitor = Monitor::attach();
    // More entries than one batch read asks for (4096).
    let ports = 20_000..25_000u16;
    in_fresh_netns(|ns| {
        for port in ports.clone() {
            drop(UdpSocket::bind(("127.0.0.1", port)).expect("bind"));
        }
        let mut read: Vec<(u16, u64)> = monitor
            .ports_in(ns.cookie)
            .into_iter()
            .filter(|c| c.role == Role::Local)
            .map(|c| (c.port, c.stats.binds))
            .collect();
        read.sort_unstable();
        let want: Vec<(u16, u64)> = ports.clone().map(|p| (p, 1)).collect();
        assert_eq!(read.len(), want.len());
        assert_eq!(read, want);
    });
}

#[test]
fn listeners_and_clients_have_an_owner_until_they_close() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let ours = |monitor: &Monitor| -> Vec<portmon_common::Owner> {
            monitor
                .owners()
                .into_values()
                .filter(|o| o.netns == ns.cookie)
                .collect()
        };
        let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("listen");
        let owners = ours(&monitor);
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert_eq!(owners[0].pid, std::process::id());
        // An outbound connection is owned by whoever called connect(); the
        // accepted end by nobody portmon saw.
        let client = TcpStream::connect(("127.0.0.1", PORT)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let owners = ours(&monitor);
        assert_eq!(owners.len(), 2, "the listener and the client: {owners:?}");
        assert!(owners.iter().all(|o| o.pid == std::process::id()), "{owners:?}");
        // The listener's command is the binding thread's, from the kernel;
        // the client's is the process's, read from /proc at the time.
        let name =
            |o: &portmon_common::Owner| String::from_utf8_lossy(&o.comm).trim_end_matches('\0').to_owned();
        let mut names: Vec<String> = owners.iter().map(name).collect();
        names.sort();
        let thread = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
        let process = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let mut want = vec![thread.trim_end().to_owned(), process.trim_end().to_owned()];
        want.sort();
        assert_eq!(names, want);
        drop(client);
        drop(server);
        drop(listener);
        assert_eq!(ours(&monitor), vec![], "a closed socket keeps no owner");
    });
}

#[test]
fn bind_to_port_zero_counts_the_port_the_kernel_chose() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind 0");
        let port = socket.local_addr().unwrap().port();
        let stats = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, port);
        assert_eq!((stats.binds, stats.live), (1, 1), "bind(0) that got port {port}");
        let zero = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, 0);
        assert_eq!(zero.binds, 0, "nothing counted on port 0");
        drop(socket);
        let stats = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, port);
        assert_eq!((stats.binds, stats.live), (1, 0), "after close");
    });
}

#[test]
fn connects_count_by_remote_port_and_by_local_ephemeral_port() {
    let _serial = serial();
    let monitor = Monitor::attach();
    let connects = 12;
    in_fresh_netns(|ns| {
        let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("listen");
        let clients: Vec<TcpStream> = (0..connects)
            .map(|_| TcpStream::connect(("127.0.0.1", PORT)).expect("connect"))
            .collect();
        let accepted: Vec<TcpStream> = (0..connects)
            .map(|_| listener.accept().expect("accept").0)
            .collect();

        let remote = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Remote, PORT);
        assert_eq!(
            (remote.connects, remote.live),
            (connects as u64, connects as i64),
            "to {PORT}"
        );
        let local_ports: Vec<u16> = clients.iter().map(|c| c.local_addr().unwrap().port()).collect();
        for &port in &local_ports {
            let local = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Local, port);
            assert_eq!((local.connects, local.live), (1, 1), "from ephemeral port {port}");
        }
        let server = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Local, PORT);
        assert_eq!(
            (server.binds, server.listens, server.live),
            (1, 1, 1),
            "the listener"
        );

        drop(clients);
        drop(accepted);
        drop(listener);
        for port in local_ports.iter().copied().chain([PORT]) {
            let local = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Local, port);
            assert_eq!(local.live, 0, "port {port} still live after close");
        }
        let remote = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Remote, PORT);
        assert_eq!(remote.live, 0, "connections to {PORT} still live after close");
    });
}

#[test]
fn ipv6_and_udp_connects_are_counted() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, PORT)).expect("listen v6");
        let client = TcpStream::connect((Ipv6Addr::LOCALHOST, PORT)).expect("connect v6");
        let local_port = client.local_addr().unwrap().port();
        let remote = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet6, Role::Remote, PORT);
        assert_eq!(remote.connects, 1, "v6 connect to {PORT}");
        let local = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet6, Role::Local, local_port);
        assert_eq!(local.connects, 1, "v6 connect from {local_port}");
        drop((client, listener));

        let server = UdpSocket::bind(("127.0.0.1", PORT)).expect("udp server");
        let target: SocketAddr = server.local_addr().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp client");
        let udp_port = udp.local_addr().unwrap().port();
        udp.connect(target).expect("udp connect");
        let remote = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Remote, PORT);
        assert_eq!((remote.connects, remote.live), (1, 1), "udp connect to {PORT}");
        let local = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, udp_port);
        assert_eq!(
            (local.binds, local.connects, local.live),
            (1, 1, 1),
            "udp client port"
        );
        drop(udp);
        let local = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, udp_port);
        assert_eq!(local.live, 0, "udp client port after close");
    });
}

#[test]
fn udp_connect_without_bind_counts_the_auto_bound_port_once_settled() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let server = UdpSocket::bind(("127.0.0.1", PORT)).expect("udp server");
        // std binds before connecting; a raw socket connects unbound, so the
        // kernel auto-binds it inside connect().
        let fd = raw_udp_connect([127, 0, 0, 1], PORT).expect("raw udp connect");
        let port = local_port(fd);
        // The outcome of an auto-bind shows at the socket's next event: here, close.
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        let local = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, port);
        assert_eq!((local.connects, local.live), (1, 0), "auto-bound port {port}");
        let remote = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Remote, PORT);
        assert_eq!((remote.connects, remote.live), (1, 0), "udp connects to {PORT}");
        drop(server);
    });
}

/// connect() on a fresh, unbound UDP socket.
pub fn raw_udp_connect(addr: [u8; 4], port: u16) -> std::io::Result<i32> {
    // SAFETY: plain socket calls on a sockaddr_in we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes(addr);
        let rc = libc::connect(
            fd,
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        Ok(fd)
    }
}

/// The local port of a socket.
pub fn local_port(fd: i32) -> u16 {
    // SAFETY: getsockname into a sockaddr_storage we own.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        assert_eq!(libc::getsockname(fd, (&raw mut ss).cast(), &mut len), 0);
        u16::from_be((*(&raw const ss).cast::<libc::sockaddr_in>()).sin_port)
    }
}

#[test]
fn counts_that_find_no_room_are_counted_as_lost() {
    let _serial = serial();
    let blocks = 2;
    let monitor = Monitor::attach_with(LoadOptions {
        port_stats: blocks,
        ..LoadOptions::default()
    });
    let before = monitor.health().port_stats_overflow;
    in_fresh_netns(|ns| {
        // Ports in four blocks of 64, made in this order: the first two
        // blocks take the room there is, unless a process elsewhere on the
        // host took some of it first.
        let made = [(20_000, 3), (20_064, 1), (20_128, 2), (20_192, 1)];
        for (port, n) in made {
            for _ in 0..n {
                drop(UdpSocket::bind(("127.0.0.1", port)).expect("bind"));
            }
        }
        let mut held = 0;
        let mut lost = 0;
        for (port, n) in made {
            let counted = monitor
                .stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, port)
                .binds;
            let missed = all_or_nothing(counted, n, &format!("port {port}"));
            lost += missed;
            if missed == 0 {
                held += 1;
            }
        }
        assert!(held <= blocks, "{held} blocks counted in room for {blocks}");
        assert!(lost >= 3, "the last two blocks' binds were counted");
        assert_lost_are_counted(lost, monitor.health().port_stats_overflow - before);
    });
}

#[test]
fn counts_that_find_no_table_are_counted_as_lost() {
    let _serial = serial();
    let monitor = Monitor::attach_with(LoadOptions {
        port_tables: 1,
        ..LoadOptions::default()
    });
    let before = monitor.health().port_tables_overflow;
    in_fresh_netns(|ns| {
        // Three tables wanted (binds of UDP over IPv4, over IPv6, and of
        // TCP), one there: the first takes it, unless a process elsewhere on
        // the host took it first.
        let made = [
            (Proto::Udp, Family::Inet, 21_000, 2),
            (Proto::Udp, Family::Inet6, 21_001, 3),
            (Proto::Tcp, Family::Inet, 21_002, 1),
        ];
        for (proto, family, port, n) in made {
            let addr: SocketAddr = match family {
                Family::Inet => ([127, 0, 0, 1], port).into(),
                Family::Inet6 => (Ipv6Addr::LOCALHOST, port).into(),
            };
            for _ in 0..n {
                match proto {
                    Proto::Udp => drop(UdpSocket::bind(addr).expect("bind")),
                    Proto::Tcp => drop(std::net::TcpListener::bind(addr).expect("bind")),
                }
            }
        }
        let mut lost = 0;
        for (proto, family, port, n) in made {
            let counted = monitor.stats(ns.cookie, proto, family, Role::Local, port).binds;
            lost += all_or_nothing(counted, n, &format!("{proto:?} {family:?} port {port}"));
        }
        assert!(lost >= 3, "binds counted in more tables than there are");
        assert_lost_are_counted(lost, monitor.health().port_tables_overflow - before);
    });
}

/// A full map counts a port's binds exactly or not at all: the binds of
/// `what` it missed (`n` or none).
fn all_or_nothing(counted: u64, n: u64, what: &str) -> u64 {
    assert!(
        counted == n || counted == 0,
        "{what}: {counted} of {n} binds counted"
    );
    if counted == 0 {
        n
    } else {
        0
    }
}

/// Every bind a full map did not count shows in its overflow counter.
fn assert_lost_are_counted(lost: u64, overflow: u64) {
    assert!(
        overflow >= lost,
        "{lost} binds not counted, {overflow} counted as lost"
    );
}

#[test]
fn suspended_programs_count_nothing_and_keep_what_they_counted() {
    let _serial = serial();
    let mut monitor = Monitor::attach();
    let port = PORT + 40;
    in_fresh_netns(|ns| {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("listen");
        let connect = || {
            let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            drop(listener.accept().expect("accept"));
            drop(client);
        };
        let bind = || drop(UdpSocket::bind(("127.0.0.1", port)).expect("bind"));
        let counted = |monitor: &Monitor| {
            let remote = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Remote, port);
            let udp = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, port);
            (remote.connects, udp.binds)
        };
        connect();
        bind();
        assert_eq!(counted(&monitor), (1, 1), "attached");
        // Connects reach the state tracepoint and binds the cgroup hooks:
        // both kinds of link must be gone.
        monitor.suspend();
        connect();
        bind();
        assert_eq!(counted(&monitor), (1, 1), "suspended");
        monitor.resume();
        connect();
        bind();
        assert_eq!(counted(&monitor), (2, 2), "resumed");
    });
}
