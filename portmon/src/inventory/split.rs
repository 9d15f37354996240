//! Splitting one namespace's TCP dump in two, so that two cores fill it.
//!
//! The kernel fills a dump in the thread that reads it, one socket at a
//! time, and each dump walks every socket of the host whatever it asks for.
//! A namespace with many sockets is dumped as two halves by port (when no
//! walk of the bind table already keeps the second core busy), each half
//! asked with a filter (`INET_DIAG_REQ_BYTECODE`, checked by
//! `inet_diag_bc_run` in net/ipv4/inet_diag.c) on a socket of its own: the
//! walk is done twice, the filling once. The halves are cut where the last
//! snapshot's ports cut the namespace's sockets in two, by local port (a
//! host of clients) or by remote port (a host of servers: accepted
//! connections share the listener's port but not their peers').

use crate::kernel::sock_diag::{End, NsSocket, Ports};

/// Below this many TCP sockets a second walk costs more than it saves.
const SPLIT_FROM: u32 = 10_000;
/// A cut leaving more than this share on one side is not worth a walk.
const WORST_SHARE: f64 = 0.7;
/// Ports per histogram bucket: cuts fall on multiples of it.
const BUCKET: usize = 64;
const BUCKETS: usize = 65_536 / BUCKET;

/// Where to cut a namespace's TCP sockets: the halves are
/// `AtMost(end, port)` and `Above(end, port)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    pub end: End,
    pub port: u16,
}

impl Cut {
    pub fn halves(self) -> [Ports; 2] {
        [
            Ports::AtMost(self.end, self.port),
            Ports::Above(self.end, self.port),
        ]
    }
}

/// TCP sockets by local and by remote port, in buckets of [`BUCKET`];
/// allocated at the first socket, as most namespaces have too few to cut.
#[derive(Debug, Clone, Default)]
pub(super) struct Histogram(Option<Box<Buckets>>);

#[derive(Debug, Clone)]
struct Buckets {
    local: [u32; BUCKETS],
    remote: [u32; BUCKETS],
}

impl Histogram {
    fn buckets(&mut self) -> &mut Buckets {
        self.0.get_or_insert_with(|| {
            Box::new(Buckets {
                local: [0; BUCKETS],
                remote: [0; BUCKETS],
            })
        })
    }

    /// Counts the TCP sockets of `sockets`.
    pub fn add(&mut self, sockets: &[NsSocket]) {
        for s in sockets
            .iter()
            .filter(|s| s.socket.proto == portmon_common::Proto::Tcp)
        {
            let buckets = self.buckets();
            buckets.local[usize::from(s.socket.local.port()) / BUCKET] += 1;
            buckets.remote[usize::from(s.socket.remote.port()) / BUCKET] += 1;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        let Some(theirs) = &other.0 else {
            return;
        };
        let mine = self.buckets();
        for (mine, theirs) in [
            (&mut mine.local, &theirs.local),
            (&mut mine.remote, &theirs.remote),
        ] {
            for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                *a += b;
            }
        }
    }

    /// The cut that leaves the smaller worst half, if the namespace is
    /// worth cutting and some cut shares it well enough.
    pub fn cut(&self) -> Option<Cut> {
        let buckets = self.0.as_deref()?;
        let total: u32 = buckets.local.iter().sum();
        if total < SPLIT_FROM {
            return None;
        }
        let best = |end: End, buckets: &[u32; BUCKETS]| {
            let mut below = 0;
            let mut best = (total, 0);
            // The last bucket cannot end a lower half: nothing is above it.
            for (i, n) in buckets[..BUCKETS - 1].iter().enumerate() {
                below += n;
                let worst = below.max(total - below);
                if worst < best.0 {
                    best = (worst, i);
                }
            }
            let port = ((best.1 + 1) * BUCKET - 1) as u16;
            (best.0, Cut { end, port })
        };
        let (local, remote) = (
            best(End::Local, &buckets.local),
            best(End::Remote, &buckets.remote),
        );
        let (worst, cut) = if local.0 <= remote.0 { local } else { remote };
        (f64::from(worst) <= WORST_SHARE * f64::from(total)).then_some(cut)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use portmon_common::{Family, Proto};

    use super::*;
    use crate::kernel::sock_diag::{
        filter::{INET_DIAG_BC_D_GE, INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE},
        Socket, SocketState,
    };

    fn tcp(local: u16, remote: u16) -> NsSocket {
        NsSocket {
            netns: 1,
            socket: Socket {
                proto: Proto::Tcp,
                family: Family::Inet,
                state: SocketState::Established,
                local: SocketAddr::from(([127, 0, 0, 1], local)),
                remote: SocketAddr::from(([127, 0, 0, 1], remote)),
                cookie: 0,
                uid: 0,
                inode: 0,
            },
        }
    }

    fn cut_of(sockets: &[NsSocket]) -> Option<Cut> {
        let mut histogram = Histogram::default();
        histogram.add(sockets);
        histogram.cut()
    }

    #[test]
    fn a_client_host_is_cut_by_local_port_a_server_by_remote_port() {
        // Clients: ephemeral local ports 30000-49999, to one server port.
        let clients: Vec<NsSocket> = (0..20_000).map(|i| tcp(30_000 + i, 443)).collect();
        let cut = cut_of(&clients).unwrap();
        assert_eq!(cut.end, End::Local);
        let below = clients
            .iter()
            .filter(|s| s.socket.local.port() <= cut.port)
            .count();
        assert!(
            (9_900..=10_100).contains(&below),
            "{below} of 20000 below {cut:?}"
        );
        // A server: every connection on port 443, from ephemeral ports.
        let server: Vec<NsSocket> = (0..20_000).map(|i| tcp(443, 30_000 + i)).collect();
        assert_eq!(cut_of(&server).map(|c| c.end), Some(End::Remote));
    }

    #[test]
    fn few_sockets_or_one_port_everywhere_are_not_cut() {
        assert_eq!(
            cut_of(&(0..5_000).map(|i| tcp(30_000 + i, 443)).collect::<Vec<_>>()),
            None
        );
        assert_eq!(cut_of(&vec![tcp(443, 50_000); 20_000]), None);
        // UDP sockets do not count.
        let mut udp = tcp(1, 2);
        udp.socket.proto = Proto::Udp;
        assert_eq!(cut_of(&vec![udp; 20_000]), None);
    }

    #[test]
    fn the_halves_ask_for_complementary_ports() {
        let [low, high] = Cut {
            end: End::Local,
            port: 32_767,
        }
        .halves();
        let low = low.attribute().unwrap();
        let high = high.attribute().unwrap();
        // nlattr: length 12, INET_DIAG_REQ_BYTECODE; op: code, yes 8, no 12;
        // then the port in a second op's `no`.
        assert_eq!(low[..8], [12, 0, 1, 0, INET_DIAG_BC_S_LE, 8, 12, 0]);
        assert_eq!(u16::from_ne_bytes([low[10], low[11]]), 32_767);
        assert_eq!(high[4], INET_DIAG_BC_S_GE);
        assert_eq!(u16::from_ne_bytes([high[10], high[11]]), 32_768);
        let [_, remote] = Cut {
            end: End::Remote,
            port: 100,
        }
        .halves();
        assert_eq!(remote.attribute().unwrap()[4], INET_DIAG_BC_D_GE);
        assert_eq!(Ports::All.attribute(), None);
    }
}
