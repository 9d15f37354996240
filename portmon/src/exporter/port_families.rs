//! The per-port families: the kernel's counters and the failures, socket
//! states and listeners, and ports in use per class.

use portmon_common::{Op, Proto, Role};

use super::{
    definitions as def,
    families::{Families, Series},
    is_listening, netns_name,
    port_series::{busiest, Activity, FastSet, PortId, SeriesKey},
    ScrapeInput,
};
use crate::{counters::PortCount, fnv::FastMap, port_class::PortClass, port_set::PortSet};

/// Adds every per-port family to `families`; returns how many ports have
/// their numbers folded into a class series in at least one family.
pub fn add(input: &ScrapeInput<'_>, families: &mut Families) -> usize {
    let labels = Labels {
        input,
        with_netns: families.with_netns(),
    };
    let limit = input.port_series_limit;

    // Ranking: sockets now, and the events counted so far.
    let mut activity: FastMap<PortId, Activity> = FastMap::default();
    for s in input.sockets {
        let entry = activity.entry(socket_port(s)).or_default();
        // Listeners first: they are what people ask about.
        entry.listening += u64::from(is_listening(s.socket.state, s.socket.proto));
        entry.total += 1;
    }
    for p in input.ports.iter().filter(|p| reported(p)) {
        let s = &p.stats;
        activity.entry(port_id(p)).or_default().total += s.binds + s.listens + s.connects;
    }
    for (k, n) in input.failures {
        activity.entry(failure_port(k)).or_default().total += n;
    }
    let own = busiest(&activity, limit);

    counters(input, &own, &labels, families);
    gauges(input, &own, &labels, families);
    ports_in_use(input, &labels, families);
    activity.len() - own.len()
}

fn counters(input: &ScrapeInput<'_>, own: &FastSet<PortId>, labels: &Labels<'_>, families: &mut Families) {
    let mut binds = Series::new();
    let mut connects = Series::new();
    for p in input.ports.iter().filter(|p| reported(p)) {
        let values = labels.of(key(own, port_id(p)));
        match p.role {
            Role::Local => *binds.entry(values).or_default() += p.stats.binds as f64,
            Role::Remote => *connects.entry(values).or_default() += p.stats.connects as f64,
        }
    }
    let mut bind_errors = Series::new();
    let mut connect_errors = Series::new();
    for (k, n) in input.failures {
        let mut values = labels.of(key(own, failure_port(k)));
        values.push(k.errno.label().to_owned());
        let target = match k.op {
            Op::Bind => &mut bind_errors,
            Op::Connect => &mut connect_errors,
        };
        *target.entry(values).or_default() += *n as f64;
    }
    families.add(&def::BINDS, binds);
    families.add(&def::CONNECTS, connects);
    families.add(&def::BIND_ERRORS, bind_errors);
    families.add(&def::CONNECT_ERRORS, connect_errors);
}

/// The series of a port: its own, or its class's past the limit.
fn key(own: &FastSet<PortId>, id: PortId) -> SeriesKey {
    if own.contains(&id) {
        SeriesKey::Port(id)
    } else {
        SeriesKey::folded(id)
    }
}

fn gauges(input: &ScrapeInput<'_>, own: &FastSet<PortId>, labels: &Labels<'_>, families: &mut Families) {
    // Counted by compact keys first, labels built once per series (a busy
    // host has 100,000 sockets).
    let mut by_state: FastMap<(SeriesKey, &'static str), u64> = FastMap::default();
    let mut by_listener: FastMap<SeriesKey, u64> = FastMap::default();
    for s in input.sockets {
        let key = key(own, socket_port(s));
        if is_listening(s.socket.state, s.socket.proto) {
            *by_listener.entry(key).or_default() += 1;
        }
        *by_state.entry((key, s.socket.state_label())).or_default() += 1;
    }
    let sockets = by_state.into_iter().map(|((key, state), n)| {
        let mut values = labels.of(key);
        values.push(state.to_owned());
        (values, n as f64)
    });
    families.add(&def::SOCKETS, sockets);
    let listening = by_listener.into_iter().map(|(key, n)| (labels.of(key), n as f64));
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
    let mut series = Series::new();
    for class in PortClass::ALL {
        for &proto in Proto::ALL {
            let count = |netns: Option<u64>| -> f64 {
                in_use
                    .iter()
                    .filter(|((p, n), _)| *p == proto && netns.is_none_or(|want| *n == want))
                    .map(|(_, set)| set.count_in(class))
                    .sum::<u64>() as f64
            };
            let values = vec![proto.label().to_owned(), class.label().to_owned()];
            if labels.with_netns {
                for &netns in &namespaces {
                    let mut values = values.clone();
                    values.push(netns_name(input.netns_names, netns));
                    series.insert(values, count(Some(netns)));
                }
            } else {
                series.insert(values, count(None));
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
            } => (netns, proto, family, String::new(), class, String::new()),
        };
        let mut values = vec![
            proto.label().to_owned(),
            family.label().to_owned(),
            port,
            class.label().to_owned(),
            service,
        ];
        if self.with_netns {
            values.push(netns_name(self.input.netns_names, netns));
        }
        values
    }
}

/// Every namespace the scrape has numbers of.
pub fn namespaces(input: &ScrapeInput<'_>) -> usize {
    let mut all: Vec<u64> = input.sockets.iter().map(|s| s.netns).collect();
    all.extend(input.ports.iter().map(|p| p.netns));
    all.extend(input.failures.keys().map(|k| k.netns));
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

fn socket_port(s: &crate::inventory::NsSocket) -> PortId {
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
