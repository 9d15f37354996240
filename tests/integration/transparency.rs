//! With every program attached, nothing that would succeed fails: portmon
//! watches and never decides.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use portmon_tests::{in_fresh_netns, serial, Monitor};

use crate::counting::raw_udp_connect;

/// Each operation portmon's hooks see, run once; returns the first failure.
fn run_every_operation() -> Result<(), String> {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind v4 port 0: {e}"))?;
    let v4_addr = v4.local_addr().unwrap();
    TcpStream::connect(v4_addr).map_err(|e| format!("connect v4: {e}"))?;

    let v6 = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).map_err(|e| format!("bind v6 port 0: {e}"))?;
    let v6_port = v6.local_addr().unwrap().port();
    TcpStream::connect((Ipv6Addr::LOCALHOST, v6_port)).map_err(|e| format!("connect v6: {e}"))?;
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{v6_port}").parse().unwrap();
    TcpStream::connect(mapped).map_err(|e| format!("connect v4-mapped v6: {e}"))?;

    let udp_server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("udp bind 0: {e}"))?;
    let udp_port = udp_server.local_addr().unwrap().port();
    let fd = raw_udp_connect([127, 0, 0, 1], udp_port).map_err(|e| format!("udp connect: {e}"))?;
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    let udp6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).map_err(|e| format!("udp v6 bind 0: {e}"))?;
    udp6.connect((Ipv6Addr::LOCALHOST, udp_port))
        .map_err(|e| format!("udp v6 connect: {e}"))?;
    Ok(())
}

#[test]
fn no_operation_fails_because_portmon_is_attached() {
    let _serial = serial();
    in_fresh_netns(|_| run_every_operation()).expect("baseline without portmon");
    let _monitor = Monitor::attach();
    in_fresh_netns(|_| run_every_operation()).expect("with portmon attached");
}
