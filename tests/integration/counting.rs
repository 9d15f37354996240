//! Successful binds, listens, connects and closes are counted exactly: per
//! port where a program chose the port, per pool where the kernel did.

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use portmon::kernel::bpf::LoadOptions;
use portmon_common::{Assignment, Family, Proto, Role};
use portmon_tests::{in_fresh_netns, reset_on_close, serial, Monitor};

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
    // Root made the namespace, so the host's user namespace owns it: its
    // table and block come from the reserve no unprivileged user's
    // namespace can take (the kernel programs read the owner through BTF).
    let health = monitor.health();
    assert!(
        health.reserved_tables_taken > 0 && health.reserved_blocks_taken > 0,
        "a namespace root made took nothing from the reserve: {health:?}"
    );
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
fn listeners_have_an_owner_until_they_close_and_clients_none() {
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
        // The listener's command is the binding thread's, from the kernel.
        let thread = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
        let name = String::from_utf8_lossy(&owners[0].comm)
            .trim_end_matches('\0')
            .to_owned();
        assert_eq!(name, thread.trim_end());
        // A client takes no slot: nobody reads one, and a slot claimed and
        // given back per connection is most of what portmon would cost it.
        let client = TcpStream::connect(("127.0.0.1", PORT)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert_eq!(ours(&monitor).len(), 1, "the listener alone");
        drop(client);
        drop(server);
        drop(listener);
        assert_eq!(ours(&monitor), vec![], "a closed socket keeps no owner");
        // bind(0) records no owner (a client's, as a rule), but one that
        // goes on to listen is a service's: the listening process owns it.
        let bound = UdpSocket::bind("127.0.0.1:0").expect("bind 0");
        assert_eq!(ours(&monitor), vec![], "a client bound to port 0 has no owner");
        drop(bound);
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on port 0");
        let owners = ours(&monitor);
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert_eq!(owners[0].pid, std::process::id());
        assert_eq!(
            String::from_utf8_lossy(&owners[0].comm).trim_end_matches('\0'),
            thread.trim_end()
        );
        drop(listener);
        assert_eq!(ours(&monitor), vec![], "a closed listener keeps no owner");
    });
}

#[test]
fn bind_to_port_zero_counts_in_its_pool_not_on_the_port() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        for (family, addr) in [(Family::Inet, "127.0.0.1:0"), (Family::Inet6, "[::1]:0")] {
            let udp = UdpSocket::bind(addr).expect("bind 0");
            let tcp = TcpListener::bind(addr).expect("bind 0");
            for (proto, port) in [
                (Proto::Udp, udp.local_addr().unwrap().port()),
                (Proto::Tcp, tcp.local_addr().unwrap().port()),
            ] {
                let stats = monitor.stats(ns.cookie, proto, family, Role::Local, port);
                // Held, so live; listened on (a program's choice); no bind
                // counted on the port the kernel chose.
                let listens = u64::from(proto == Proto::Tcp);
                assert_eq!(
                    (stats.binds, stats.listens, stats.live),
                    (0, listens, 1),
                    "{proto:?} {family:?} bind(0) that got port {port}"
                );
                assert_eq!(
                    monitor.assigned(ns.cookie, proto, family, Assignment::Bind),
                    1,
                    "{proto:?} {family:?}"
                );
            }
            drop((udp, tcp));
        }
        for proto in [Proto::Udp, Proto::Tcp] {
            for family in [Family::Inet, Family::Inet6] {
                for how in [Assignment::Connect, Assignment::Autobind] {
                    assert_eq!(
                        monitor.assigned(ns.cookie, proto, family, how),
                        0,
                        "{proto:?} {family:?} {how:?}"
                    );
                }
            }
        }
    });
    let health = monitor.health();
    assert!(
        health.reserved_pools_taken > 0,
        "a namespace root made took no pool from the reserve: {health:?}"
    );
}

#[test]
fn connects_count_by_remote_port_and_in_the_pool() {
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
        assert_eq!(remote.connects, connects as u64, "to {PORT}");
        assert_eq!(
            monitor.assigned(ns.cookie, Proto::Tcp, Family::Inet, Assignment::Connect),
            connects as u64
        );
        for client in &clients {
            let port = client.local_addr().unwrap().port();
            let local = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Local, port);
            assert_eq!(local, Default::default(), "ephemeral port {port} has no counters");
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
        let local = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet, Role::Local, PORT);
        assert_eq!(local.live, 0, "port {PORT} still live after close");
    });
}

#[test]
fn ipv6_and_udp_connects_are_counted() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, PORT)).expect("listen v6");
        let client = TcpStream::connect((Ipv6Addr::LOCALHOST, PORT)).expect("connect v6");
        let remote = monitor.stats(ns.cookie, Proto::Tcp, Family::Inet6, Role::Remote, PORT);
        assert_eq!(remote.connects, 1, "v6 connect to {PORT}");
        assert_eq!(
            monitor.assigned(ns.cookie, Proto::Tcp, Family::Inet6, Assignment::Connect),
            1
        );
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
            (0, 0, 1),
            "udp client port"
        );
        drop(udp);
        let local = monitor.stats(ns.cookie, Proto::Udp, Family::Inet, Role::Local, udp_port);
        assert_eq!(local.live, 0, "udp client port after close");
        let pool = |how| monitor.assigned(ns.cookie, Proto::Udp, Family::Inet, how);
        assert_eq!(
            (pool(Assignment::Bind), pool(Assignment::Autobind)),
            (1, 0),
            "bound, then connected"
        );
    });
}

#[test]
fn udp_connect_without_bind_counts_an_autobind_once_settled() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        for family in [Family::Inet, Family::Inet6] {
            let server = UdpSocket::bind(loopback(family, PORT)).expect("udp server");
            // std binds before connecting; a raw socket connects unbound, so
            // the kernel auto-binds it inside connect().
            let fd = raw_udp(family, |fd, addr, len| {
                // SAFETY: a socket and an address of ours.
                unsafe { libc::connect(fd, addr, len) }
            })
            .expect("raw udp connect");
            // The outcome of an auto-bind shows at the socket's next event: here, close.
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            let pool = monitor.assigned(ns.cookie, Proto::Udp, family, Assignment::Autobind);
            assert_eq!(pool, 1, "{family:?}");
            let remote = monitor.stats(ns.cookie, Proto::Udp, family, Role::Remote, PORT);
            assert_eq!(
                (remote.connects, remote.live),
                (1, 0),
                "{family:?} udp connects to {PORT}"
            );
            drop(server);
        }
    });
}

#[test]
fn udp_sendto_without_bind_counts_an_autobind_when_it_closes() {
    let _serial = serial();
    let monitor = Monitor::attach();
    in_fresh_netns(|ns| {
        for family in [Family::Inet, Family::Inet6] {
            let server = UdpSocket::bind(loopback(family, PORT)).expect("udp server");
            let fds: Vec<i32> = (0..3)
                .map(|_| {
                    raw_udp(family, |fd, addr, len| {
                        // SAFETY: a socket, a buffer and an address of ours.
                        let sent = unsafe { libc::sendto(fd, b"x".as_ptr().cast(), 1, 0, addr, len) };
                        if sent == 1 {
                            0
                        } else {
                            -1
                        }
                    })
                    .expect("sendto from an unbound socket")
                })
                .collect();
            // A second datagram from the same socket is no second port.
            let mut buf = [0u8; 8];
            for _ in 0..3 {
                server.recv(&mut buf).expect("datagram");
            }
            let pool =
                |monitor: &Monitor| monitor.assigned(ns.cookie, Proto::Udp, family, Assignment::Autobind);
            assert_eq!(pool(&monitor), 0, "{family:?}: counted when they close");
            for fd in fds {
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
            }
            assert_eq!(pool(&monitor), 3, "{family:?}");
            assert_eq!(
                monitor.assigned(ns.cookie, Proto::Udp, family, Assignment::Bind),
                0,
                "{family:?}"
            );
        }
    });
}

fn loopback(family: Family, port: u16) -> SocketAddr {
    match family {
        Family::Inet => ([127, 0, 0, 1], port).into(),
        Family::Inet6 => (Ipv6Addr::LOCALHOST, port).into(),
    }
}

/// A fresh, unbound UDP socket of `family`, handed with the loopback
/// address and PORT to `call` (connect or sendto); the socket, if the call
/// returned 0.
pub fn raw_udp(
    family: Family,
    call: impl FnOnce(i32, *const libc::sockaddr, u32) -> i32,
) -> std::io::Result<i32> {
    // SAFETY: plain socket calls on addresses we own.
    unsafe {
        let domain = match family {
            Family::Inet => libc::AF_INET,
            Family::Inet6 => libc::AF_INET6,
        };
        let fd = libc::socket(domain, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = match family {
            Family::Inet => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = PORT.to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
                call(fd, (&raw const sin).cast(), std::mem::size_of_val(&sin) as u32)
            }
            Family::Inet6 => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = PORT.to_be();
                sin6.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
                call(fd, (&raw const sin6).cast(), std::mem::size_of_val(&sin6) as u32)
            }
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        Ok(fd)
    }
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

/// bind(0), a connect that does not wait, and a close with RST, `n` times:
/// the socket is closed connecting or connected, whichever the SYN-ACK's
/// softirq made it first.
fn connect_and_close_at_once(addr: SocketAddr, n: usize) {
    let SocketAddr::V4(addr) = addr else {
        panic!("IPv4 only")
    };
    for _ in 0..n {
        // SAFETY: plain socket calls on structs we own; the fd is closed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
            let len = std::mem::size_of_val(&sin) as u32;
            assert_eq!(libc::bind(fd, (&raw const sin).cast(), len), 0, "bind 0");
            sin.sin_port = addr.port().to_be();
            libc::connect(fd, (&raw const sin).cast(), len);
            reset_on_close(std::os::fd::BorrowedFd::borrow_raw(fd));
            libc::close(fd);
        }
    }
}

#[test]
fn sockets_closed_while_their_connect_completes_leave_no_slot_behind() {
    let _serial = serial();
    let monitor = Monitor::attach();
    let overflow = monitor.health().sockets_overflow;
    in_fresh_netns(|ns| {
        let listener = TcpListener::bind(("127.0.0.1", PORT + 60)).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if listener.accept().is_err() {
                        std::thread::yield_now();
                    }
                }
            });
            let workers: Vec<_> = (0..2)
                .map(|_| scope.spawn(move || connect_and_close_at_once(addr, 5_000)))
                .collect();
            for w in workers {
                w.join().expect("worker");
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        drop(listener);
        let left = |monitor: &Monitor| {
            monitor
                .followed()
                .into_iter()
                .filter(|f| f.slot.netns == ns.cookie)
                .count()
        };
        let gone = portmon_tests::wait_until(std::time::Duration::from_secs(5), || left(&monitor) == 0);
        assert!(gone, "{} slots of closed sockets left", left(&monitor));
    });
    assert_eq!(monitor.health().sockets_overflow, overflow, "slots ran out");
}
