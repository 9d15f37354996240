//! How full each namespace's ephemeral pool is, measured against its
//! sockets by the kernel's rules (see the `exhaustion` module).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use foldhash::HashMap as FastMap;
use portmon_common::Proto;
use serde::Serialize;

use super::{
    listeners::{listeners_in_pool, reserving, ListenerInPool},
    pool::{EphemeralPool, PoolSettings},
};
use crate::{
    kernel::sock_diag::{NsSocket, SocketState},
    port_set::PortSet,
};

/// How many of the busiest destinations get a series of their own.
pub const DEFAULT_TOP_DESTINATIONS: usize = 10;

/// How full one namespace's pool is for one protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolUsage {
    pub netns: u64,
    pub proto: Proto,
    /// Ports the kernel may hand out.
    pub pool: u32,
    /// Ports of the pool held by any socket of this protocol.
    pub in_use: u32,
    /// Those held by bound sockets (by `bind()`, `listen()`, or for UDP any
    /// socket): out of reach of every `connect()`.
    pub bound: u32,
    /// `in_use / pool`: 1.0 means the next `bind(0)` (or UDP auto-bind) fails.
    pub bind_ratio: f64,
    /// The busiest destination's share of what `connect()` has left (for
    /// UDP, the auto-bind's: the bind ratio): 1.0 means the next fails.
    pub connect_ratio: f64,
}

/// Connections from one namespace to one destination, against its limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationUsage {
    pub netns: u64,
    pub proto: Proto,
    pub remote: SocketAddr,
    /// Connections holding a pool port shared with other destinations
    /// (TIME_WAIT ones included unless `tcp_tw_reuse` frees them).
    pub connections: u32,
    /// `connections / (pool - bound)`, from the busiest local address.
    pub ratio: f64,
}

/// The exhaustion picture of every namespace with a known pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EphemeralReport {
    pub pools: Vec<PoolUsage>,
    /// The busiest destinations over all namespaces, busiest first.
    pub destinations: Vec<DestinationUsage>,
    /// Ports listened on inside their namespace's pool.
    pub listeners: Vec<ListenerInPool>,
    /// Per namespace with such listeners, the `ip_local_reserved_ports`
    /// value that takes them out of the pool and keeps what is reserved.
    pub reserved_ports_fixes: Vec<ReservedPortsFix>,
}

/// The `ip_local_reserved_ports` value that takes a namespace's listeners
/// out of its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservedPortsFix {
    pub netns: u64,
    /// What is reserved now, in the kernel's format.
    pub current: String,
    /// What to write: `current` and the listeners' ports.
    pub value: String,
}

/// One namespace's ports, as one pass over the sockets finds them.
struct NetnsPorts<'a> {
    settings: &'a PoolSettings,
    /// Its pool, shared with every namespace of the same settings.
    pool: &'a Pool,
    tcp_in_use: PortSet,
    tcp_bound: PortSet,
    udp_in_use: PortSet,
}

/// A pool's ports and their number.
struct Pool {
    ports: PortSet,
    size: u32,
}

/// Measures every namespace of `pools` against its sockets. `exclusive`
/// holds the cookies of sockets the kernel programs saw take their port by
/// `bind()` or `listen()`; a TIME_WAIT socket keeps its cookie.
pub fn assess(
    sockets: &[NsSocket],
    pools: &HashMap<u64, PoolSettings>,
    exclusive: &HashSet<u64, impl std::hash::BuildHasher>,
    top: usize,
) -> EphemeralReport {
    // Namespaces mostly keep the defaults: each set of settings is made
    // into a pool once, not once per namespace.
    let mut distinct: FastMap<&EphemeralPool, Pool> = FastMap::default();
    for settings in pools.values() {
        distinct.entry(&settings.pool).or_insert_with(|| {
            let ports = settings.pool.ports();
            let size = ports.len();
            Pool { ports, size }
        });
    }
    let mut namespaces: FastMap<u64, NetnsPorts<'_>> = pools
        .iter()
        .map(|(&netns, settings)| {
            let ports = NetnsPorts {
                settings,
                pool: &distinct[&settings.pool],
                tcp_in_use: PortSet::default(),
                tcp_bound: PortSet::default(),
                udp_in_use: PortSet::default(),
            };
            (netns, ports)
        })
        .collect();

    for s in sockets {
        let Some(ns) = namespaces.get_mut(&s.netns) else {
            continue;
        };
        let port = s.socket.local.port();
        if !ns.pool.ports.contains(port) {
            continue;
        }
        match s.socket.proto {
            Proto::Udp => ns.udp_in_use.insert(port),
            Proto::Tcp => {
                ns.tcp_in_use.insert(port);
                if holds_exclusively(&s.socket.state) || exclusive.contains(&s.socket.cookie) {
                    ns.tcp_bound.insert(port);
                }
            }
        }
    }

    // A second pass: a connection counts against its destination only on a
    // port no bound socket holds, which the first pass had to learn first.
    let mut per_destination: FastMap<(u64, IpAddr, SocketAddr), u32> = FastMap::default();
    for s in sockets {
        let socket = &s.socket;
        if socket.proto != Proto::Tcp || !draws_on_destination(socket.state) {
            continue;
        }
        let Some(ns) = namespaces.get(&s.netns) else {
            continue;
        };
        let port = socket.local.port();
        if !ns.pool.ports.contains(port) || ns.tcp_bound.contains(port) {
            continue;
        }
        if socket.state == SocketState::TimeWait
            && ns.settings.tw_reuse.frees(socket.local.ip(), socket.remote.ip())
        {
            continue;
        }
        *per_destination
            .entry((s.netns, socket.local.ip(), socket.remote))
            .or_default() += 1;
    }

    // What connect() has left in each namespace, counted once (a count
    // walks the whole set).
    let connectable: FastMap<u64, u32> = namespaces
        .iter()
        .map(|(&netns, ns)| (netns, ns.pool.size - ns.tcp_bound.len()))
        .collect();
    // The limit is per local address too; a destination reached from
    // several shows its busiest.
    let mut destinations: FastMap<(u64, SocketAddr), DestinationUsage> = FastMap::default();
    for ((netns, _, remote), connections) in per_destination {
        let ratio = ratio(connections, connectable[&netns]);
        let entry = destinations.entry((netns, remote)).or_insert(DestinationUsage {
            netns,
            proto: Proto::Tcp,
            remote,
            connections,
            ratio,
        });
        if ratio > entry.ratio {
            entry.connections = connections;
            entry.ratio = ratio;
        }
    }
    let mut destinations: Vec<DestinationUsage> = destinations.into_values().collect();

    let mut busiest: FastMap<u64, f64> = FastMap::default();
    for d in &destinations {
        let ratio = busiest.entry(d.netns).or_insert(0.0);
        *ratio = ratio.max(d.ratio);
    }
    let mut pools_out = Vec::with_capacity(namespaces.len() * 2);
    for (&netns, ns) in &namespaces {
        let pool = ns.pool.size;
        let tcp_in_use = ns.tcp_in_use.len();
        let tcp_bound = ns.tcp_bound.len();
        let busiest = busiest.get(&netns).copied().unwrap_or(0.0);
        let tcp_connect = if pool == tcp_bound { 1.0 } else { busiest };
        pools_out.push(PoolUsage {
            netns,
            proto: Proto::Tcp,
            pool,
            in_use: tcp_in_use,
            bound: tcp_bound,
            bind_ratio: ratio(tcp_in_use, pool),
            connect_ratio: tcp_connect,
        });
        let udp_in_use = ns.udp_in_use.len();
        let udp_ratio = ratio(udp_in_use, pool);
        pools_out.push(PoolUsage {
            netns,
            proto: Proto::Udp,
            pool,
            in_use: udp_in_use,
            bound: udp_in_use,
            bind_ratio: udp_ratio,
            connect_ratio: udp_ratio,
        });
    }
    pools_out.sort_by_key(|p| (p.netns, p.proto));

    let busier = |a: &DestinationUsage, b: &DestinationUsage| {
        b.ratio
            .total_cmp(&a.ratio)
            .then(b.connections.cmp(&a.connections))
            .then((a.netns, a.remote).cmp(&(b.netns, b.remote)))
    };
    if destinations.len() > top && top > 0 {
        destinations.select_nth_unstable_by(top - 1, busier);
    }
    destinations.truncate(top);
    destinations.sort_by(busier);
    let listeners = listeners_in_pool(sockets, pools);
    let reserved_ports_fixes = reserved_ports_fixes(&listeners, pools);
    EphemeralReport {
        pools: pools_out,
        destinations,
        listeners,
        reserved_ports_fixes,
    }
}

fn reserved_ports_fixes(
    listeners: &[ListenerInPool],
    pools: &HashMap<u64, PoolSettings>,
) -> Vec<ReservedPortsFix> {
    let mut fixes = Vec::new();
    for group in listeners.chunk_by(|a, b| a.netns == b.netns) {
        let netns = group[0].netns;
        let Some(settings) = pools.get(&netns) else {
            continue;
        };
        let reserved = &settings.pool.reserved;
        fixes.push(ReservedPortsFix {
            netns,
            current: reserved.to_string(),
            value: reserving(reserved, group.iter().map(|l| l.port)).to_string(),
        });
    }
    fixes
}

/// TCP states whose socket holds its port by `bind()` or `listen()`: a
/// listener, and a socket bound and doing nothing (the kernel dumps those
/// as CLOSE, since Linux 6.7).
fn holds_exclusively(state: &SocketState) -> bool {
    matches!(state, SocketState::Listen | SocketState::Bound)
}

/// States of a socket that took its port for a connection of its own
/// (request sockets carry their listener's port).
fn draws_on_destination(state: SocketState) -> bool {
    !matches!(
        state,
        SocketState::Listen
            | SocketState::Bound
            | SocketState::SynRecv
            | SocketState::NewSynRecv
            | SocketState::Close
    )
}

/// `used / available`; an empty pool is full.
fn ratio(used: u32, available: u32) -> f64 {
    if available == 0 {
        1.0
    } else {
        f64::from(used) / f64::from(available)
    }
}

#[cfg(test)]
mod tests {
    use portmon_common::Family;

    use super::*;
    use crate::exhaustion::pool::TwReuse;
    use crate::{exhaustion::pool::test_pool, kernel::sock_diag::Socket};

    const NS: u64 = 7;

    fn settings(tw_reuse: TwReuse) -> HashMap<u64, PoolSettings> {
        HashMap::from([(
            NS,
            PoolSettings {
                pool: test_pool(),
                tw_reuse,
            },
        )])
    }

    fn tcp(state: SocketState, local: &str, remote: &str, cookie: u64) -> NsSocket {
        NsSocket {
            netns: NS,
            socket: Socket {
                proto: Proto::Tcp,
                family: Family::Inet,
                state,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                cookie,
                uid: 0,
                inode: 0,
            },
        }
    }

    fn connections(n: u16, remote: &str, state: SocketState) -> Vec<NsSocket> {
        (0..n)
            .map(|i| {
                tcp(
                    state,
                    &format!("10.0.0.1:{}", 40010 + i),
                    remote,
                    u64::from(i) + 1000,
                )
            })
            .collect()
    }

    fn pool_of(report: &EphemeralReport, proto: Proto) -> &PoolUsage {
        report.pools.iter().find(|p| p.proto == proto).unwrap()
    }

    #[test]
    fn one_destination_fills_the_pool_for_connect_only() {
        let sockets = connections(90, "10.0.0.2:80", SocketState::Established);
        let report = assess(&sockets, &settings(TwReuse::Off), &HashSet::new(), 10);
        let tcp = pool_of(&report, Proto::Tcp);
        assert_eq!((tcp.pool, tcp.in_use, tcp.bound), (90, 90, 0));
        assert_eq!(tcp.connect_ratio, 1.0);
        assert_eq!(tcp.bind_ratio, 1.0);
        assert_eq!(report.destinations.len(), 1);
        assert_eq!(report.destinations[0].connections, 90);
    }

    #[test]
    fn two_destinations_share_ports() {
        let mut sockets = connections(45, "10.0.0.2:80", SocketState::Established);
        sockets.extend(connections(45, "10.0.0.3:80", SocketState::Established));
        let report = assess(&sockets, &settings(TwReuse::Off), &HashSet::new(), 10);
        let tcp = pool_of(&report, Proto::Tcp);
        assert_eq!(tcp.in_use, 45, "the same 45 ports serve both");
        assert_eq!(tcp.connect_ratio, 0.5);
        assert_eq!(tcp.bind_ratio, 0.5);
    }

    #[test]
    fn bound_ports_leave_connect_less_room() {
        let mut sockets = connections(40, "10.0.0.2:80", SocketState::Established);
        // Ten sockets bound to port 0 and idle, one listener in the pool.
        for i in 0..10 {
            sockets.push(tcp(
                SocketState::Bound,
                &format!("0.0.0.0:{}", 40060 + i),
                "0.0.0.0:0",
                1,
            ));
        }
        sockets.push(tcp(SocketState::Listen, "0.0.0.0:40080", "0.0.0.0:0", 2));
        // A bind-before-connect: connected, but its port is exclusive.
        sockets.push(tcp(SocketState::Established, "10.0.0.1:40081", "10.0.0.2:80", 3));
        let report = assess(&sockets, &settings(TwReuse::Off), &HashSet::from([3]), 10);
        let tcp = pool_of(&report, Proto::Tcp);
        assert_eq!((tcp.in_use, tcp.bound), (52, 12));
        assert_eq!(tcp.connect_ratio, 40.0 / 78.0);
        assert_eq!(report.destinations[0].connections, 40);
    }

    #[test]
    fn time_wait_counts_unless_reuse_frees_it() {
        let sockets = connections(90, "10.0.0.2:80", SocketState::TimeWait);
        let off = assess(&sockets, &settings(TwReuse::Off), &HashSet::new(), 10);
        assert_eq!(pool_of(&off, Proto::Tcp).connect_ratio, 1.0);
        let loopback = assess(&sockets, &settings(TwReuse::Loopback), &HashSet::new(), 10);
        assert_eq!(pool_of(&loopback, Proto::Tcp).connect_ratio, 1.0, "not loopback");
        let on = assess(&sockets, &settings(TwReuse::On), &HashSet::new(), 10);
        assert_eq!(pool_of(&on, Proto::Tcp).connect_ratio, 0.0);
        assert_eq!(
            pool_of(&on, Proto::Tcp).bind_ratio,
            1.0,
            "bind(0) still cannot have them"
        );
        let lo: Vec<NsSocket> = (0..10)
            .map(|i| {
                tcp(
                    SocketState::TimeWait,
                    &format!("127.0.0.1:{}", 40010 + i),
                    "127.0.0.1:80",
                    1,
                )
            })
            .collect();
        let report = assess(&lo, &settings(TwReuse::Loopback), &HashSet::new(), 10);
        assert!(report.destinations.is_empty());
    }

    #[test]
    fn ports_outside_the_pool_and_reserved_ones_do_not_count() {
        let sockets = vec![
            tcp(SocketState::Established, "10.0.0.1:40005", "10.0.0.2:80", 1),
            tcp(SocketState::Established, "10.0.0.1:50000", "10.0.0.2:80", 2),
            tcp(SocketState::Listen, "0.0.0.0:80", "0.0.0.0:0", 3),
        ];
        let report = assess(&sockets, &settings(TwReuse::Off), &HashSet::new(), 10);
        let tcp = pool_of(&report, Proto::Tcp);
        assert_eq!((tcp.in_use, tcp.bound, tcp.connect_ratio), (0, 0, 0.0));
    }

    #[test]
    fn udp_ports_are_all_exclusive() {
        let sockets: Vec<NsSocket> = (0..45)
            .map(|i| {
                let mut s = tcp(
                    SocketState::Established,
                    &format!("10.0.0.1:{}", 40010 + i),
                    "10.0.0.2:53",
                    1,
                );
                s.socket.proto = Proto::Udp;
                s
            })
            .collect();
        let report = assess(&sockets, &settings(TwReuse::Off), &HashSet::new(), 10);
        let udp = pool_of(&report, Proto::Udp);
        assert_eq!((udp.in_use, udp.bound), (45, 45));
        assert_eq!((udp.bind_ratio, udp.connect_ratio), (0.5, 0.5));
        assert!(report.destinations.is_empty());
    }

    #[test]
    fn only_the_busiest_destinations_are_kept() {
        let mut sockets = Vec::new();
        for d in 0..20u16 {
            for i in 0..=d {
                sockets.push(tcp(
                    SocketState::Established,
                    &format!("10.0.0.1:{}", 40010 + i),
                    &format!("10.0.1.{d}:443"),
                    1,
                ));
            }
        }
        let report = assess(&sockets, &settings(TwReuse::Off), &HashSet::new(), 3);
        let kept: Vec<u32> = report.destinations.iter().map(|d| d.connections).collect();
        assert_eq!(kept, vec![20, 19, 18]);
    }

    #[test]
    fn an_empty_pool_is_full() {
        let mut pools = settings(TwReuse::Off);
        pools
            .get_mut(&NS)
            .unwrap()
            .pool
            .reserved
            .insert_range(40000, 40099);
        let report = assess(&[], &pools, &HashSet::new(), 10);
        for p in &report.pools {
            assert_eq!((p.pool, p.bind_ratio, p.connect_ratio), (0, 1.0, 1.0));
        }
    }
}
