//! Listeners in the ephemeral pool: a socket listening on (TCP) or bound
//! to (UDP, unconnected) a port the kernel may also hand out to an outbound
//! `connect()` or `bind(0)`. While it runs nothing happens; once it stops,
//! any connection that picks the port keeps the service from binding it
//! again (EADDRINUSE) until that connection and its TIME_WAIT are gone.
//! Listing the port in `ip_local_reserved_ports` takes it out of the pool
//! (`inet_is_local_reserved_port` in include/net/ip.h) and ends the hazard.

use std::collections::HashMap;

use portmon_common::Proto;
use serde::Serialize;

use super::pool::{PoolSettings, ReservedPorts};
use crate::kernel::sock_diag::{is_listening, NsSocket};

/// One port listened on inside its namespace's ephemeral pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerInPool {
    pub netns: u64,
    pub proto: Proto,
    pub port: u16,
    /// Cookie of the first listening socket on the port (SO_REUSEPORT
    /// groups and one socket per address hold a port many times).
    pub cookie: u64,
    /// Who listens, where portmon knows it.
    pub owner: Option<ListenerOwner>,
}

/// The process holding a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerOwner {
    pub pid: u32,
    pub comm: String,
    /// The systemd unit its cgroup names, if any.
    pub unit: Option<String>,
}

/// Every (namespace, protocol, port) listened on inside its namespace's
/// pool, sorted by namespace, protocol and port.
pub fn listeners_in_pool(sockets: &[NsSocket], pools: &HashMap<u64, PoolSettings>) -> Vec<ListenerInPool> {
    let mut found: Vec<ListenerInPool> = sockets
        .iter()
        .filter(|s| is_listening(s.socket.state, s.socket.proto))
        .filter(|s| {
            pools
                .get(&s.netns)
                .is_some_and(|p| p.pool.contains(s.socket.local.port()))
        })
        .map(|s| ListenerInPool {
            netns: s.netns,
            proto: s.socket.proto,
            port: s.socket.local.port(),
            cookie: s.socket.cookie,
            owner: None,
        })
        .collect();
    found.sort_by_key(|l| (l.netns, l.proto, l.port, l.cookie));
    found.dedup_by_key(|l| (l.netns, l.proto, l.port));
    found
}

/// `reserved` with `ports` added: the value that reserves them without
/// dropping what is reserved already, in the kernel's format.
pub fn reserving(reserved: &ReservedPorts, ports: impl IntoIterator<Item = u16>) -> ReservedPorts {
    let mut value = reserved.clone();
    for port in ports {
        value.insert_range(port, port);
    }
    value
}

#[cfg(test)]
mod tests {
    use portmon_common::Family;

    use super::*;
    use crate::{
        exhaustion::pool::{test_pool, TwReuse},
        kernel::sock_diag::{Socket, SocketState},
    };

    fn pools(netns: u64) -> HashMap<u64, PoolSettings> {
        HashMap::from([(
            netns,
            PoolSettings {
                pool: test_pool(),
                tw_reuse: TwReuse::Off,
            },
        )])
    }

    fn socket(netns: u64, proto: Proto, state: SocketState, local: &str, cookie: u64) -> NsSocket {
        NsSocket {
            netns,
            socket: Socket {
                proto,
                family: Family::Inet,
                state,
                local: local.parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                cookie,
                uid: 0,
                inode: 0,
            },
        }
    }

    #[test]
    fn only_listeners_on_pool_ports_count_once_each() {
        use SocketState::*;
        let sockets = [
            // In the pool: twice (two addresses), counted once.
            socket(1, Proto::Tcp, Listen, "127.0.0.1:40050", 11),
            socket(1, Proto::Tcp, Listen, "10.0.0.1:40050", 10),
            // Reserved, below and above the range, not listening.
            socket(1, Proto::Tcp, Listen, "0.0.0.0:40005", 12),
            socket(1, Proto::Tcp, Listen, "0.0.0.0:8080", 13),
            socket(1, Proto::Tcp, Listen, "0.0.0.0:40100", 14),
            socket(1, Proto::Tcp, Established, "10.0.0.1:40060", 15),
            // UDP unconnected is a listener; the same port over TCP is another.
            socket(1, Proto::Udp, Close, "0.0.0.0:40050", 16),
            // A namespace without a known pool.
            socket(2, Proto::Tcp, Listen, "0.0.0.0:40050", 17),
        ];
        let found: Vec<_> = listeners_in_pool(&sockets, &pools(1))
            .into_iter()
            .map(|l| (l.netns, l.proto, l.port, l.cookie))
            .collect();
        assert_eq!(found, [(1, Proto::Tcp, 40050, 10), (1, Proto::Udp, 40050, 16)]);
    }

    #[test]
    fn reserving_keeps_what_is_reserved() {
        let cases = [
            ("", vec![40050], "40050"),
            ("40000-40009", vec![40050], "40000-40009,40050"),
            ("40000-40009", vec![40010, 40050, 40050], "40000-40010,40050"),
            ("8000-8100,9000", vec![], "8000-8100,9000"),
        ];
        for (reserved, ports, want) in cases {
            let reserved: ReservedPorts = reserved.parse().unwrap();
            assert_eq!(reserving(&reserved, ports).to_string(), want, "{reserved}");
        }
    }
}
