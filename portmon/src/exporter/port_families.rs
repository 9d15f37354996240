//! The per-port families: the kernel's counters and the failures (counters,
//! their series assigned for good), socket states and listeners (gauges,
//! ranked at each scrape), and ports in use per class.

use portmon_common::{Op, Proto, Role};

use super::{
    definitions::{self as def, Definition},
    families::Families,
    port_series::{busiest, Activity, PortId, SeriesKey, SeriesMemory, FOLDED_PORT},
    ScrapeInput,
};
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use crate::{
    address_scope::AddressScope,
    failures::Errno,
    kernel::{
        bpf::counters::PortCount,
        sock_diag::{is_listening, NsSocket},
    },
    namespaces::display_name,
    port_class::PortClass,
    port_set::PortSet,
    registry::Assignment,
};

/// Adds every per-port family to `families`; returns how many ports have
/// their numbers folded into a class series in at least one family.
pub fn add(input: &ScrapeInput<'_>, memory: &mut SeriesMemory, families: &mut Families) -> usize {
    let labels = Labels {
        input,
        with_netns: families.with_netns(),
    };
    let limit = input.port_series_limit;

    // Ranking: sockets now, and the events counted so far.
    let mut by_sockets: FastMap<PortId, Activity> = FastMap::default();
    for s in input.sockets {
        let entry = by_sockets.entry(socket_port(s)).or_default();
        entry.listening += u64::from(is_listening(s.socket.state, s.socket.proto));
        entry.total += 1;
    }
    let mut with_counters: FastMap<PortId, Activity> = FastMap::default();
    for p in input.ports.iter().filter(|p| reported(p)) {
        let s = &p.stats;
        with_counters.entry(port_id(p)).or_default().total += s.binds + s.listens + s.connects;
    }
    for (k, n) in input.failures.iter().filter(|(k, _)| k.op != Op::Send) {
        with_counters.entry(failure_port(k)).or_default().total += n;
    }
    for (id, activity) in &mut with_counters {
        if let Some(now) = by_sockets.get(id) {
            activity.listening += now.listening;
            activity.total += now.total;
        }
    }
    memory.counters.admit(with_counters, limit);
    let gauge_ports = busiest(&by_sockets, limit);

    counters(input, memory, &labels, families);
    gauges(input, &gauge_ports, &labels, families);
    ports_in_use(input, &labels, families);

    let folded_counters = memory.counters.folded();
    let folded_gauges_only = by_sockets
        .keys()
        .filter(|id| !gauge_ports.contains(id) && !folded_counters.contains(id))
        .count();
    folded_counters.len() + folded_gauges_only
}

fn counters(
    input: &ScrapeInput<'_>,
    memory: &mut SeriesMemory,
    labels: &Labels<'_>,
    families: &mut Families,
) {
    type Now = FastMap<(SeriesKey, Option<Errno>), f64>;
    let (mut binds, mut connects) = (Now::default(), Now::default());
    for p in input.ports.iter().filter(|p| reported(p)) {
        let key = memory.counters.key(port_id(p));
        match p.role {
            Role::Local => *binds.entry((key, None)).or_default() += p.stats.binds as f64,
            Role::Remote => *connects.entry((key, None)).or_default() += p.stats.connects as f64,
        }
    }
    // Counts that found no block of their own are known by class only:
    // they go to the class series, so that totals stay exact.
    for o in input.overflow {
        let key = SeriesKey::Folded {
            netns: o.netns,
            proto: o.proto,
            family: o.family,
            class: PortClass::of(o.first_port()),
        };
        match o.kind {
            portmon_common::kind::BINDS => *binds.entry((key, None)).or_default() += o.count as f64,
            portmon_common::kind::CONNECTS_TO => *connects.entry((key, None)).or_default() += o.count as f64,
            _ => {}
        }
    }
    let (mut bind_errors, mut connect_errors) = (Now::default(), Now::default());
    for (k, n) in input.failures {
        let key = memory.counters.key(failure_port(k));
        let target = match k.op {
            Op::Bind => &mut bind_errors,
            Op::Connect => &mut connect_errors,
            // A send names no port of the socket's: counted per pool only.
            Op::Send => continue,
        };
        *target.entry((key, Some(k.errno))).or_default() += *n as f64;
    }
    let all: [(&Definition, Now); 4] = [
        (&def::BINDS, binds),
        (&def::CONNECTS, connects),
        (&def::BIND_ERRORS, bind_errors),
        (&def::CONNECT_ERRORS, connect_errors),
    ];
    for (family, now) in all {
        let series = memory
            .floors
            .settle(family.name, now)
            .into_iter()
            .map(|(key, errno, value)| {
                let mut values = labels.of(key);
                values.extend(errno.map(|e| e.label().to_owned()));
                (values, value)
            });
        families.add(family, series);
    }
}

fn gauges(input: &ScrapeInput<'_>, own: &FastSet<PortId>, labels: &Labels<'_>, families: &mut Families) {
    // Counted by compact keys first, labels built once per series (a busy
    // host has 100,000 sockets).
    let mut by_state: FastMap<(SeriesKey, &'static str), u64> = FastMap::default();
    // Ports, not sockets: SO_REUSEPORT groups and one socket per address
    // hold one port many times (`portmon_sockets{state="listen"}` counts
    // the sockets).
    let mut listeners: FastSet<(SeriesKey, AddressScope, u16)> = FastSet::default();
    for s in input.sockets {
        let id = socket_port(s);
        let key = if own.contains(&id) {
            SeriesKey::Port(id)
        } else {
            SeriesKey::folded(id)
        };
        if is_listening(s.socket.state, s.socket.proto) {
            listeners.insert((key, AddressScope::of(s.socket.local.ip()), id.port));
        }
        *by_state.entry((key, s.socket.state_label())).or_default() += 1;
    }
    let mut by_listener: FastMap<(SeriesKey, AddressScope), u64> = FastMap::default();
    for (key, scope, _) in listeners {
        *by_listener.entry((key, scope)).or_default() += 1;
    }
    let sockets = by_state.into_iter().map(|((key, state), n)| {
        let mut values = labels.of(key);
        values.push(state.to_owned());
        (values, n as f64)
    });
    families.add(&def::SOCKETS, sockets);
    let listening = by_listener.into_iter().map(|((key, scope), n)| {
        let mut values = labels.of(key);
        values.push(scope.label().to_owned());
        values.push(labels.assignment(key).to_owned());
        (values, n as f64)
    });
    families.add(&def::LISTENING_PORTS, listening);
}

fn ports_in_use(input: &ScrapeInput<'_>, labels: &Labels<'_>, families: &mut Families) {
    let mut in_use: FastMap<(Proto, u64), PortSet> = FastMap::default();
    for s in input.sockets {
        in_use
            .entry((s.socket.proto, s.netns))
            .or_default()
            .insert(s.socket.local.port());
    }
    let mut namespaces: Vec<u64> = in_use.keys().map(|(_, netns)| *netns).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let mut series = Vec::new();
    for class in PortClass::ALL {
        for &proto in Proto::ALL {
            let values = vec![proto.label().to_owned(), class.label().to_owned()];
            if labels.with_netns {
                for &netns in &namespaces {
                    let count = in_use.get(&(proto, netns)).map_or(0, |set| set.count_in(class));
                    let mut values = values.clone();
                    values.push(display_name(input.netns_names, netns));
                    series.push((values, count as f64));
                }
            } else {
                let count: u64 = in_use
                    .iter()
                    .filter(|((p, _), _)| *p == proto)
                    .map(|(_, set)| set.count_in(class))
                    .sum();
                series.push((values, count as f64));
            }
        }
    }
    families.add(&def::PORTS_IN_USE, series);
}

/// The per-port labels of series.
struct Labels<'a> {
    input: &'a ScrapeInput<'a>,
    with_netns: bool,
}

impl Labels<'_> {
    /// `proto`, `family`, `port`, `class`, `service` and, when on, `netns`.
    fn of(&self, key: SeriesKey) -> Vec<String> {
        let (netns, proto, family, port, class, service) = match key {
            SeriesKey::Port(id) => {
                let service = self
                    .input
                    .registry
                    .service_name(id.port, id.proto.into())
                    .unwrap_or("");
                (
                    id.netns,
                    id.proto,
                    id.family,
                    id.port.to_string(),
                    PortClass::of(id.port),
                    service.to_owned(),
                )
            }
            SeriesKey::Folded {
                netns,
                proto,
                family,
                class,
            } => (netns, proto, family, FOLDED_PORT.to_owned(), class, String::new()),
        };
        let mut values = vec![
            proto.label().to_owned(),
            family.label().to_owned(),
            port,
            class.label().to_owned(),
            service,
        ];
        if self.with_netns {
            values.push(display_name(self.input.netns_names, netns));
        }
        values
    }
}

impl Labels<'_> {
    /// `assignment`: IANA's word on the port; for a folded series, only
    /// the dynamic class has one.
    fn assignment(&self, key: SeriesKey) -> &'static str {
        match key {
            SeriesKey::Port(id) => self.input.registry.assignment(id.port, id.proto.into()).label(),
            SeriesKey::Folded {
                class: PortClass::Dynamic,
                ..
            } => Assignment::Dynamic.label(),
            SeriesKey::Folded { .. } => "",
        }
    }
}

/// Every namespace the scrape has numbers of.
/// Namespaces with anything to export this scrape: a series of any other
/// namespace is dropped for good (its grace period is over).
pub fn live_namespaces(input: &ScrapeInput<'_>) -> FastSet<u64> {
    let mut live: FastSet<u64> = input.sockets.iter().map(|s| s.netns).collect();
    live.extend(input.ports.iter().map(|p| p.netns));
    live.extend(input.failures.keys().map(|k| k.netns));
    live.extend(input.overflow.iter().map(|o| o.netns));
    live
}

pub fn namespaces(input: &ScrapeInput<'_>) -> usize {
    let mut all: Vec<u64> = input.sockets.iter().map(|s| s.netns).collect();
    all.extend(input.ports.iter().map(|p| p.netns));
    all.extend(input.failures.keys().map(|k| k.netns));
    all.extend(input.overflow.iter().map(|o| o.netns));
    all.sort_unstable();
    all.dedup();
    all.len()
}

fn port_id(p: &PortCount) -> PortId {
    PortId {
        netns: p.netns,
        proto: p.proto,
        family: p.family,
        port: p.port,
    }
}

fn socket_port(s: &NsSocket) -> PortId {
    PortId {
        netns: s.netns,
        proto: s.socket.proto,
        family: s.socket.family,
        port: s.socket.local.port(),
    }
}

fn failure_port(k: &crate::failures::FailureKey) -> PortId {
    PortId {
        netns: k.netns,
        proto: k.proto,
        family: k.family,
        port: k.port,
    }
}

/// Kernel counters worth a series: binds on a local port, connects to a
/// remote one. Connects counted by local ephemeral port stay in the API:
/// one series per ephemeral port would swamp Prometheus.
fn reported(p: &PortCount) -> bool {
    match p.role {
        Role::Local => p.stats.binds > 0,
        Role::Remote => p.stats.connects > 0,
    }
}
