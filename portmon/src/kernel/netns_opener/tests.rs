use std::{
    os::{fd::AsFd, unix::fs::MetadataExt},
    thread::JoinHandle,
};

use super::*;

/// A helper loop on a thread of this process (no fork), and the daemon's
/// end of its channel.
fn helper_on_a_thread() -> (Helper, JoinHandle<io::Result<()>>) {
    let mut ends = [0; 2];
    // SAFETY: socketpair writes two descriptors into `ends`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            ends.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    // SAFETY: two fresh descriptors nobody else owns.
    let (daemon_end, helper_end) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let thread = std::thread::spawn(move || {
        let own = File::open("/proc/thread-self/ns/net")?;
        helper::serve(helper_end.as_fd(), &own)
    });
    let helper = Helper {
        pid: std::process::id(),
        channel: Mutex::new(Some(daemon_end)),
    };
    (helper, thread)
}

fn own_inode() -> u64 {
    std::fs::metadata("/proc/self/ns/net")
        .expect("own namespace")
        .ino()
}

#[test]
fn a_request_with_a_path_is_refused_and_the_helper_answers_on() {
    let (helper, thread) = helper_on_a_thread();
    for name in ["../../etc/shadow", "/etc/passwd", "..", ".", "", "a\0b"] {
        let err = helper
            .open(&Target::Named(name.into()), Wanted::ALL)
            .expect_err(name);
        assert!(
            matches!(&err, OpenerError::Refused { source, .. } if source.raw_os_error() == Some(libc::EINVAL)),
            "{name:?}: {err:?}"
        );
    }
    // Not a namespace at all, under a plain name: nothing to open there.
    let err = helper
        .open(&Target::Named("portmon-no-such-namespace".into()), Wanted::ALL)
        .expect_err("missing");
    assert!(
        matches!(&err, OpenerError::Refused { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(helper.open(&Target::Pid(0), Wanted::NONE).is_err());

    // Still there, and it opens its own namespace's files.
    let mut opened = helper
        .open(&Target::Pid(std::process::id()), Wanted::ALL)
        .expect("own namespace");
    assert_eq!(opened.inode, own_inode());
    let socket = opened.take(NetnsFile::SockDiag).expect("a sock_diag socket");
    assert_eq!(
        crate::kernel::netns::socket_cookie(socket.as_fd()).expect("cookie"),
        crate::kernel::netns::current_cookie().expect("own cookie")
    );
    let range = opened.take(NetnsFile::PortRange).expect("the port range");
    let text = std::fs::read_to_string(format!("/proc/self/fd/{}", range.as_raw_fd())).expect("read");
    assert_eq!(
        text,
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap()
    );
    let only = helper
        .open(&Target::Pid(std::process::id()), Wanted::NONE)
        .expect("inode only");
    assert_eq!((only.inode, only.present()), (own_inode(), 0));

    drop(helper);
    thread.join().expect("helper thread").expect("a clean end");
}

#[test]
fn a_helper_gone_is_said_once_and_refuses_from_then_on() {
    let (helper, thread) = helper_on_a_thread();
    // The helper reads end of file and ends, as a killed one would.
    if let Some(fd) = helper.channel.lock().unwrap().as_ref() {
        // SAFETY: shutdown(2) on a descriptor we hold; it stays open.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
    }
    thread.join().expect("helper thread").expect("a clean end");
    let err = helper
        .open(&Target::Pid(std::process::id()), Wanted::NONE)
        .expect_err("gone");
    assert!(matches!(err, OpenerError::Channel(_)), "{err:?}");
    assert!(matches!(
        helper.open(&Target::Pid(1), Wanted::NONE),
        Err(OpenerError::Gone)
    ));
}

#[test]
fn targets_of_namespace_paths() {
    let cases: &[(&str, Option<Target>)] = &[
        ("/proc/42/ns/net", Some(Target::Pid(42))),
        ("/proc/42/task/43/ns/net", Some(Target::Pid(43))),
        ("/run/netns/cni-1", Some(Target::Named("cni-1".into()))),
        ("/var/run/netns/x", Some(Target::Named("x".into()))),
        ("/proc/self/ns/net", None),
        ("/proc/0/ns/net", None),
        ("/run/netns/../x", None),
        ("/run/netns/a/b", None),
        ("/etc/passwd", None),
        ("proc/42/ns/net", None),
    ];
    for (path, want) in cases {
        assert_eq!(&Target::of_path(Path::new(path)), want, "{path}");
    }
}

#[test]
fn the_helper_finds_the_owner_of_a_socket_by_inode() {
    let (helper, thread) = helper_on_a_thread();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_fd().as_raw_fd()))
        .expect("the socket's inode")
        .ino() as u32;
    let walk = helper.socket_owners(&[inode]).expect("an answer");
    assert_eq!(walk.holders.get(&inode), Some(&std::process::id()), "{walk:?}");
    assert!(walk.processes >= 1, "{walk:?}");
    drop(helper);
    thread
        .join()
        .expect("the helper thread")
        .expect("the helper loop ends cleanly");
}
