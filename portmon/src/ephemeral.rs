//! Ephemeral-port exhaustion, by the kernel's own rules (Linux 6.x).
//!
//! The pool of one network namespace is `ip_local_port_range` minus
//! `ip_local_reserved_ports`. Two kinds of operations draw on it, with
//! different limits:
//!
//! - **Exclusive**: `bind()` to port 0, `listen()` without `bind()`,
//!   bind-before-connect, and UDP auto-bind take a port no socket of any
//!   kind holds (`inet_csk_find_open_port` in net/ipv4/inet_connection_sock.c,
//!   `udp_lib_get_port` in net/ipv4/udp.c). Their limit is the pool minus
//!   every port in use, TIME_WAIT included: `op="bind"`.
//! - **Shared**: `connect()` on an unbound TCP socket needs only a unique
//!   4-tuple, so one local port serves many destinations
//!   (`__inet_hash_connect` in net/ipv4/inet_hashtables.c). It skips every
//!   port whose bind bucket was made by `bind()` (`tb->fastreuse >= 0`), so
//!   its limit per (local address, remote address, remote port) is the pool
//!   minus the ports held by bound sockets: `op="connect"`.
//!
//! A TIME_WAIT socket keeps its 4-tuple until it expires, unless
//! `tcp_tw_reuse` lets `connect()` take it over (`tcp_twsk_unique` in
//! net/ipv4/tcp_ipv4.c: `1` always, `2` when either end is a loopback
//! address). The kernel also wants the TIME_WAIT socket to be older than a
//! second and to have seen TCP timestamps; portmon counts every such socket
//! as reusable, erring on the side of the pool having room.
//!
//! When the pool runs out, TCP `connect()` fails with EADDRNOTAVAIL, UDP
//! `connect()` with EAGAIN (`inet_autobind` in `inet_dgram_connect`,
//! net/ipv4/af_inet.c), and `bind()` to port 0 with EADDRINUSE
//! (`inet_csk_get_port`). The integration tests check each on the running
//! kernel.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::FileExt,
    path::Path,
};

use portmon_common::{Op, Proto};
use serde::Serialize;

use crate::{
    failures::Errno,
    fnv::FastMap,
    inventory::{NsSocket, SocketState},
    port_class::{
        parse_value, EphemeralPool, PortClassError, LOCAL_PORT_RANGE_FILE, PROC_SYS_NET_IPV4,
        RESERVED_PORTS_FILE,
    },
    port_set::PortSet,
};

/// How many of the busiest destinations get a series of their own.
pub const DEFAULT_TOP_DESTINATIONS: usize = 10;

const TW_REUSE_FILE: &str = "tcp_tw_reuse";

/// `net.ipv4.tcp_tw_reuse`: may `connect()` take over a TIME_WAIT socket's 4-tuple?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TwReuse {
    /// `0`.
    Off,
    /// `1`.
    On,
    /// `2`, the default: only when either end is a loopback address.
    Loopback,
}

impl TwReuse {
    fn from_sysctl(value: u8) -> Self {
        match value {
            0 => TwReuse::Off,
            1 => TwReuse::On,
            _ => TwReuse::Loopback,
        }
    }

    /// Whether a TIME_WAIT socket between these ends is free for `connect()`.
    fn frees(self, local: IpAddr, remote: IpAddr) -> bool {
        match self {
            TwReuse::Off => false,
            TwReuse::On => true,
            TwReuse::Loopback => is_loopback(local) || is_loopback(remote),
        }
    }
}

fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// What decides one namespace's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub pool: EphemeralPool,
    pub tw_reuse: TwReuse,
}

/// The sysctl files of one namespace, opened inside it. A file under
/// `/proc/sys/net` shows the namespace of the thread that opened it (its
/// `ctl_table` points into that `struct net`), so once open it reads that
/// namespace from any thread: no `setns` per scrape, and no privilege
/// needed after start. Reading it each scrape follows every change.
#[derive(Debug)]
pub struct PoolSysctls {
    range: File,
    reserved: File,
    tw_reuse: File,
}

impl PoolSysctls {
    /// Opens the calling thread's namespace's files.
    pub fn open() -> io::Result<Self> {
        let dir = Path::new(PROC_SYS_NET_IPV4);
        Ok(Self {
            range: File::open(dir.join(LOCAL_PORT_RANGE_FILE))?,
            reserved: File::open(dir.join(RESERVED_PORTS_FILE))?,
            tw_reuse: File::open(dir.join(TW_REUSE_FILE))?,
        })
    }

    /// The namespace's settings as of now.
    pub fn read(&self) -> Result<PoolSettings, PortClassError> {
        let dir = Path::new(PROC_SYS_NET_IPV4);
        let read = |file: &File, name: &str| {
            let path = dir.join(name);
            read_from_start(file).map_err(|source| PortClassError::Read {
                path: path.clone(),
                source,
            })
        };
        let range_path = dir.join(LOCAL_PORT_RANGE_FILE);
        let reserved_path = dir.join(RESERVED_PORTS_FILE);
        let pool = EphemeralPool {
            range: parse_value(&range_path, &read(&self.range, LOCAL_PORT_RANGE_FILE)?)?,
            reserved: parse_value(&reserved_path, &read(&self.reserved, RESERVED_PORTS_FILE)?)?,
        };
        // Absent from kernels before 4.x's value 2 or unreadable: the default.
        let tw_reuse = read(&self.tw_reuse, TW_REUSE_FILE)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map_or(TwReuse::Loopback, TwReuse::from_sysctl);
        Ok(PoolSettings { pool, tw_reuse })
    }
}

/// A sysctl or procfs file's whole content, read from offset 0 (such files
/// answer each read from the offset given, so the file need not be reopened).
pub(crate) fn read_from_start(file: &File) -> io::Result<String> {
    let mut content = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read_at(&mut chunk, content.len() as u64)?;
        if n == 0 {
            break;
        }
        content.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(content).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

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
}

/// One namespace's ports, as one pass over the sockets finds them.
struct NetnsPorts<'a> {
    settings: &'a PoolSettings,
    pool: PortSet,
    tcp_in_use: PortSet,
    tcp_bound: PortSet,
    udp_in_use: PortSet,
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
    let mut namespaces: FastMap<u64, NetnsPorts<'_>> = pools
        .iter()
        .map(|(&netns, settings)| {
            let mut pool = PortSet::default();
            let range = settings.pool.range;
            for port in range.low..=range.high {
                if !settings.pool.is_reserved(port) {
                    pool.insert(port);
                }
            }
            let ports = NetnsPorts {
                settings,
                pool,
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
        if !ns.pool.contains(port) {
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
        if !ns.pool.contains(port) || ns.tcp_bound.contains(port) {
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
        .map(|(&netns, ns)| (netns, ns.pool.len() - ns.tcp_bound.len()))
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

    let mut pools_out = Vec::with_capacity(namespaces.len() * 2);
    for (&netns, ns) in &namespaces {
        let pool = ns.pool.len();
        let tcp_in_use = ns.tcp_in_use.len();
        let tcp_bound = ns.tcp_bound.len();
        let busiest = destinations
            .iter()
            .filter(|d| d.netns == netns)
            .map(|d| d.ratio)
            .fold(0.0, f64::max);
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
    EphemeralReport {
        pools: pools_out,
        destinations,
    }
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

/// Which pool a failure says ran out, if it says one did: a TCP connect
/// with EADDRNOTAVAIL, a UDP connect with EAGAIN, a bind to port 0 with
/// EADDRINUSE.
pub fn exhausted(op: Op, proto: Proto, errno: Errno, port: u16) -> Option<Op> {
    match (op, proto, errno) {
        (Op::Connect, Proto::Tcp, Errno::AddrNotAvail) | (Op::Connect, Proto::Udp, Errno::Again) => {
            Some(Op::Connect)
        }
        (Op::Bind, _, Errno::AddrInUse) if port == 0 => Some(Op::Bind),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use portmon_common::Family;

    use super::*;
    use crate::{
        inventory::Socket,
        port_class::{LocalPortRange, ReservedPorts},
    };

    const NS: u64 = 7;

    /// A pool of 100 ports (40000–40099) with 10 reserved (40000–40009).
    fn settings(tw_reuse: TwReuse) -> HashMap<u64, PoolSettings> {
        let mut reserved = ReservedPorts::none();
        reserved.insert_range(40000, 40009);
        let pool = EphemeralPool {
            range: LocalPortRange {
                low: 40000,
                high: 40099,
            },
            reserved,
        };
        HashMap::from([(NS, PoolSettings { pool, tw_reuse })])
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

    #[test]
    fn which_failures_are_exhaustion() {
        assert_eq!(
            exhausted(Op::Connect, Proto::Tcp, Errno::AddrNotAvail, 80),
            Some(Op::Connect)
        );
        assert_eq!(
            exhausted(Op::Connect, Proto::Udp, Errno::Again, 53),
            Some(Op::Connect)
        );
        assert_eq!(
            exhausted(Op::Bind, Proto::Tcp, Errno::AddrInUse, 0),
            Some(Op::Bind)
        );
        assert_eq!(
            exhausted(Op::Bind, Proto::Tcp, Errno::AddrInUse, 8080),
            None,
            "a conflict"
        );
        assert_eq!(exhausted(Op::Bind, Proto::Tcp, Errno::AddrNotAvail, 0), None);
    }
}
