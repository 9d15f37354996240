//! `/metrics`: built at scrape time from the kernel's counters, the failure
//! log and a fresh inventory, as the Prometheus guide to writing exporters
//! asks (nothing cached between scrapes, nothing to drift).
//!
//! Per-port series exist only for ports in use or with events, up to a
//! limit; beyond it the least busy ports fold into their range class (with
//! `port=""`), and `portmon_port_series_folded` says how many did.

use std::collections::{BTreeMap, HashMap};

use portmon_common::{Family, Proto, Role};
use prometheus::{
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
    TextEncoder,
};

mod exhaustion;

use crate::{
    counters::{Health, PortCount},
    ephemeral::EphemeralReport,
    failures::FailureKey,
    fnv::FastMap,
    inventory::{NsSocket, SocketState},
    port_class::PortClass,
    port_set::PortSet,
    registry::Registry,
};

/// Whether series carry a `netns` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NetnsLabel {
    /// Only when more than one network namespace has sockets or events.
    Auto,
    /// Always.
    Always,
}

/// Usage of one kernel map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// Everything one scrape reads.
#[derive(Debug)]
pub struct ScrapeInput<'a> {
    pub ports: &'a [PortCount],
    pub failures: &'a BTreeMap<FailureKey, u64>,
    pub sockets: &'a [NsSocket],
    pub registry: &'a Registry,
    /// Namespace cookie → the name people know it by.
    pub netns_names: &'a HashMap<u64, String>,
    pub health: Health,
    pub maps: &'a [MapUsage],
    pub programs: &'a [&'static str],
    pub port_series_limit: usize,
    pub netns_label: NetnsLabel,
    /// Ephemeral pools, by the kernel's rules.
    pub ephemeral: &'a EphemeralReport,
    /// How long assessing the pools took (socket table read included).
    pub ephemeral_seconds: f64,
    /// Connects from sockets bound to port 0 first, by command.
    pub bind_before_connect: &'a [(String, u64)],
    /// sock_diag dumps that failed after every attempt, since start.
    pub inventory_errors: &'a BTreeMap<(Proto, Family), u64>,
}

/// The series a port's numbers are added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SeriesKey {
    Port(PortId),
    Folded {
        netns: u64,
        proto: Proto,
        family: Family,
        class: PortClass,
    },
}

/// One per-port series' identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PortId {
    netns: u64,
    proto: Proto,
    family: Family,
    port: u16,
}

/// Renders the exposition text. `scrape_seconds` is how long gathering the
/// input took; the rendering itself is small next to it.
pub fn render(input: &ScrapeInput<'_>, scrape_seconds: f64) -> String {
    let mut families = Families::new(input);
    families.port_series();
    families.health(scrape_seconds);
    families.ephemeral();
    let all = families.finish();
    // Every family built here has metrics and consistent labels, the two
    // things the encoder checks; a failure would show as an empty body in
    // every test.
    TextEncoder::new().encode_to_string(&all).unwrap_or_default()
}

/// Builds metric families label by label.
struct Families<'a> {
    input: &'a ScrapeInput<'a>,
    with_netns: bool,
    kept: FastMap<PortId, bool>,
    folded: usize,
    by_name: BTreeMap<&'static str, MetricFamily>,
}

impl<'a> Families<'a> {
    fn new(input: &'a ScrapeInput<'a>) -> Self {
        let mut namespaces: Vec<u64> = input.sockets.iter().map(|s| s.netns).collect();
        namespaces.extend(input.ports.iter().map(|p| p.netns));
        namespaces.extend(input.failures.keys().map(|k| k.netns));
        namespaces.sort_unstable();
        namespaces.dedup();
        let with_netns = input.netns_label == NetnsLabel::Always || namespaces.len() > 1;
        let mut families = Self {
            input,
            with_netns,
            kept: FastMap::default(),
            folded: 0,
            by_name: BTreeMap::new(),
        };
        families.choose_ports();
        families
    }

    /// Ranks every port with sockets or events; keeps the busiest up to the limit.
    fn choose_ports(&mut self) {
        let mut activity: FastMap<PortId, (u64, u64)> = FastMap::default();
        for s in self.input.sockets {
            let id = PortId {
                netns: s.netns,
                proto: s.socket.proto,
                family: s.socket.family,
                port: s.socket.local.port(),
            };
            let entry = activity.entry(id).or_default();
            // Listeners first: they are what people ask about.
            entry.0 += u64::from(is_listening(s.socket.state, s.socket.proto));
            entry.1 += 1;
        }
        for p in self.input.ports.iter().filter(|p| reported(p)) {
            let s = &p.stats;
            activity.entry(port_id(p)).or_default().1 += s.binds + s.listens + s.connects;
        }
        for (k, n) in self.input.failures {
            let id = PortId {
                netns: k.netns,
                proto: k.proto,
                family: k.family,
                port: k.port,
            };
            activity.entry(id).or_default().1 += n;
        }
        let mut ranked: Vec<(PortId, (u64, u64))> = activity.into_iter().collect();
        let limit = self.input.port_series_limit;
        self.folded = ranked.len().saturating_sub(limit);
        // Busiest first, ties by port; only the boundary matters, so a
        // linear selection instead of a sort of every port.
        let busier = |a: &(PortId, (u64, u64)), b: &(PortId, (u64, u64))| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if self.folded > 0 && limit > 0 {
            ranked.select_nth_unstable_by(limit - 1, busier);
        }
        // Only the kept ports: a lookup that misses means folded.
        self.kept = ranked.iter().take(limit).map(|(id, _)| (*id, true)).collect();
    }

    /// The series a port's numbers go to: its own, or its class's past the limit.
    fn series_key(&self, id: PortId) -> SeriesKey {
        if self.kept.get(&id).copied().unwrap_or(false) {
            SeriesKey::Port(id)
        } else {
            SeriesKey::Folded {
                netns: id.netns,
                proto: id.proto,
                family: id.family,
                class: PortClass::of(id.port),
            }
        }
    }

    /// The labels of a series.
    fn key_labels(&self, key: SeriesKey) -> Vec<(&'static str, String)> {
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
        let mut labels = vec![
            ("proto", proto.label().to_owned()),
            ("family", family.label().to_owned()),
            ("port", port),
            ("class", class.label().to_owned()),
            ("service", service),
        ];
        if self.with_netns {
            labels.push(("netns", self.netns_name(netns)));
        }
        labels
    }

    /// The per-port labels of a series, folded into its class past the limit.
    fn port_labels(&self, id: PortId) -> Vec<(&'static str, String)> {
        self.key_labels(self.series_key(id))
    }

    fn netns_name(&self, cookie: u64) -> String {
        self.input
            .netns_names
            .get(&cookie)
            .cloned()
            .unwrap_or_else(|| format!("cookie:{cookie}"))
    }

    fn port_series(&mut self) {
        let input = self.input;
        // Counters from the kernel.
        let mut binds: BTreeMap<Vec<(&str, String)>, f64> = BTreeMap::new();
        let mut connects = BTreeMap::new();
        for p in input.ports.iter().filter(|p| reported(p)) {
            let labels = self.port_labels(port_id(p));
            match p.role {
                Role::Local => *binds.entry(labels).or_default() += p.stats.binds as f64,
                Role::Remote => *connects.entry(labels).or_default() += p.stats.connects as f64,
            }
        }
        self.add_all(
            "portmon_binds_total",
            "Successful bind() calls, by the port bound.",
            MetricType::COUNTER,
            binds,
        );
        self.add_all(
            "portmon_connects_total",
            "Successful outbound connects (TCP established, UDP connected), by destination port.",
            MetricType::COUNTER,
            connects,
        );
        // Failures, from the ring buffer.
        let mut bind_errors = BTreeMap::new();
        let mut connect_errors = BTreeMap::new();
        for (k, n) in input.failures {
            let mut labels = self.port_labels(PortId {
                netns: k.netns,
                proto: k.proto,
                family: k.family,
                port: k.port,
            });
            labels.push(("errno", k.errno.label().to_owned()));
            let target = match k.op {
                portmon_common::Op::Bind => &mut bind_errors,
                portmon_common::Op::Connect => &mut connect_errors,
            };
            *target.entry(labels).or_default() += *n as f64;
        }
        self.add_all(
            "portmon_bind_errors_total",
            "Failed bind() calls, by port and errno.",
            MetricType::COUNTER,
            bind_errors,
        );
        self.add_all(
            "portmon_connect_errors_total",
            "Failed connects, by destination port and errno.",
            MetricType::COUNTER,
            connect_errors,
        );
        // State, from the inventory: counted by compact keys first, labels
        // built once per series (a busy host has 100,000 sockets).
        let mut by_state: FastMap<(SeriesKey, &'static str), u64> = FastMap::default();
        let mut by_listener: FastMap<SeriesKey, u64> = FastMap::default();
        let mut in_use: FastMap<(Proto, u64), PortSet> = FastMap::default();
        for s in input.sockets {
            let id = PortId {
                netns: s.netns,
                proto: s.socket.proto,
                family: s.socket.family,
                port: s.socket.local.port(),
            };
            let key = self.series_key(id);
            if is_listening(s.socket.state, s.socket.proto) {
                *by_listener.entry(key).or_default() += 1;
            }
            *by_state.entry((key, s.socket.state_label())).or_default() += 1;
            in_use.entry((id.proto, s.netns)).or_default().insert(id.port);
        }
        let mut sockets = BTreeMap::new();
        for ((key, state), n) in by_state {
            let mut labels = self.key_labels(key);
            labels.push(("state", state.to_owned()));
            sockets.insert(labels, n as f64);
        }
        let listening = by_listener
            .into_iter()
            .map(|(key, n)| (self.key_labels(key), n as f64))
            .collect();
        self.add_all(
            "portmon_sockets",
            "Sockets holding a local port, by port and state (as ss shows them).",
            MetricType::GAUGE,
            sockets,
        );
        self.add_all(
            "portmon_listening_ports",
            "Listening sockets (TCP LISTEN, UDP bound and unconnected), by port.",
            MetricType::GAUGE,
            listening,
        );
        let mut ports_in_use = BTreeMap::new();
        let mut namespaces: Vec<u64> = in_use.keys().map(|(_, netns)| *netns).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        for class in PortClass::ALL {
            for &proto in Proto::ALL {
                let count = |netns: Option<u64>| -> f64 {
                    in_use
                        .iter()
                        .filter(|((p, n), _)| *p == proto && netns.is_none_or(|want| *n == want))
                        .map(|(_, set)| set.count_in(class))
                        .sum::<u64>() as f64
                };
                if self.with_netns {
                    for &netns in &namespaces {
                        let labels = vec![
                            ("proto", proto.label().to_owned()),
                            ("class", class.label().to_owned()),
                            ("netns", self.netns_name(netns)),
                        ];
                        ports_in_use.insert(labels, count(Some(netns)));
                    }
                } else {
                    let labels = vec![
                        ("proto", proto.label().to_owned()),
                        ("class", class.label().to_owned()),
                    ];
                    ports_in_use.insert(labels, count(None));
                }
            }
        }
        self.add_all(
            "portmon_ports_in_use",
            "Distinct local ports held by any socket, by IANA range class.",
            MetricType::GAUGE,
            ports_in_use,
        );
    }

    fn health(&mut self, scrape_seconds: f64) {
        let input = self.input;
        let h = input.health;
        let one = |name: &'static str, value: f64| BTreeMap::from([(vec![("map", name.to_owned())], value)]);
        self.add_all(
            "portmon_events_dropped_total",
            "Failure events lost because the ring buffer was full.",
            MetricType::COUNTER,
            BTreeMap::from([(vec![], h.events_dropped as f64)]),
        );
        let mut overflows = one("PORT_STATS", h.port_stats_overflow as f64);
        overflows.extend(one("SOCKETS", h.sockets_overflow as f64));
        overflows.extend(one("BIND_BEFORE_CONNECT", h.bind_before_connect_overflow as f64));
        self.add_all(
            "portmon_map_overflows_total",
            "Updates lost because a kernel map was full.",
            MetricType::COUNTER,
            overflows,
        );
        let mut entries = BTreeMap::new();
        let mut capacity = BTreeMap::new();
        for m in input.maps {
            entries.insert(vec![("map", m.name.to_owned())], m.entries as f64);
            capacity.insert(vec![("map", m.name.to_owned())], m.capacity as f64);
        }
        self.add_all(
            "portmon_map_entries",
            "Entries in a kernel map.",
            MetricType::GAUGE,
            entries,
        );
        self.add_all(
            "portmon_map_capacity",
            "Capacity of a kernel map.",
            MetricType::GAUGE,
            capacity,
        );
        let attached = crate::loader::PROGRAMS
            .iter()
            .map(|(name, _)| {
                (
                    vec![("program", (*name).to_owned())],
                    f64::from(u8::from(input.programs.contains(name))),
                )
            })
            .collect();
        self.add_all(
            "portmon_program_attached",
            "Whether a kernel program is attached (1) or not (0).",
            MetricType::GAUGE,
            attached,
        );
        let source = input.registry.source();
        self.add_all(
            "portmon_registry_entries",
            "Records in the port registry portmon loaded, by source format.",
            MetricType::GAUGE,
            BTreeMap::from([(
                vec![("source", source.format.label().to_owned())],
                source.entries as f64,
            )]),
        );
        let inventory_errors = Proto::ALL
            .iter()
            .flat_map(|&proto| Family::ALL.iter().map(move |&family| (proto, family)))
            .map(|(proto, family)| {
                let n = input.inventory_errors.get(&(proto, family)).copied().unwrap_or(0);
                let labels = vec![
                    ("proto", proto.label().to_owned()),
                    ("family", family.label().to_owned()),
                ];
                (labels, n as f64)
            })
            .collect();
        self.add_all(
            "portmon_inventory_errors_total",
            "sock_diag dumps that failed after every retry (their sockets were missing from that scrape), by the protocol and family they were to cover.",
            MetricType::COUNTER,
            inventory_errors,
        );
        self.add_all(
            "portmon_port_series_folded",
            "Ports folded into their range class because the per-port series limit was reached.",
            MetricType::GAUGE,
            BTreeMap::from([(vec![], self.folded as f64)]),
        );
        self.add_all(
            "portmon_port_series_limit",
            "The per-port series limit (port-series-limit).",
            MetricType::GAUGE,
            BTreeMap::from([(vec![], input.port_series_limit as f64)]),
        );
        self.add_all(
            "portmon_scrape_duration_seconds",
            "Time taken to gather this scrape (kernel maps and inventory).",
            MetricType::GAUGE,
            BTreeMap::from([(vec![], scrape_seconds)]),
        );
        self.add_all(
            "portmon_build_info",
            "portmon's version, as a label; the value is always 1.",
            MetricType::GAUGE,
            BTreeMap::from([(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)]),
        );
    }

    fn add_all(
        &mut self,
        name: &'static str,
        help: &str,
        kind: MetricType,
        series: BTreeMap<Vec<(&'static str, String)>, f64>,
    ) {
        let family = self.by_name.entry(name).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_owned());
            f.set_help(help.to_owned());
            f.set_field_type(kind);
            f
        });
        family.mut_metric().extend(
            series
                .into_iter()
                .map(|(labels, value)| metric(&labels, kind, value)),
        );
    }

    fn finish(self) -> Vec<MetricFamily> {
        self.by_name
            .into_values()
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

fn metric(labels: &[(&'static str, String)], kind: MetricType, value: f64) -> Metric {
    let pairs = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value(value.clone());
            pair
        })
        .collect();
    let mut m = Metric::from_label(pairs);
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

fn port_id(p: &PortCount) -> PortId {
    PortId {
        netns: p.netns,
        proto: p.proto,
        family: p.family,
        port: p.port,
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

/// What `ss -l` counts as listening.
pub fn is_listening(state: SocketState, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => state == SocketState::Listen,
        Proto::Udp => state == SocketState::Close,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::inventory::Socket;

    fn socket(port: u16, state: SocketState) -> NsSocket {
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let remote: SocketAddr = "0.0.0.0:0".parse().unwrap();
        NsSocket {
            netns: 7,
            socket: Socket {
                proto: Proto::Tcp,
                family: Family::Inet,
                state,
                local,
                remote,
                cookie: 1,
                uid: 0,
                inode: 0,
            },
        }
    }

    fn render_with(sockets: &[NsSocket], limit: usize) -> String {
        let registry = Registry::empty();
        let input = ScrapeInput {
            ports: &[],
            failures: &BTreeMap::new(),
            sockets,
            registry: &registry,
            netns_names: &HashMap::new(),
            health: Health::default(),
            maps: &[],
            programs: &[],
            port_series_limit: limit,
            netns_label: NetnsLabel::Auto,
            ephemeral: &EphemeralReport::default(),
            ephemeral_seconds: 0.0,
            bind_before_connect: &[],
            inventory_errors: &BTreeMap::new(),
        };
        render(&input, 0.001)
    }

    #[test]
    fn ports_past_the_limit_fold_into_their_class_and_are_counted() {
        // Two listeners (ranked first), three busy client ports.
        let mut sockets = vec![socket(80, SocketState::Listen), socket(8080, SocketState::Listen)];
        for port in [50_000, 50_001, 50_002] {
            sockets.push(socket(port, SocketState::Established));
        }
        let text = render_with(&sockets, 2);
        assert!(
            text.contains(
                r#"portmon_listening_ports{proto="tcp",family="ipv4",port="80",class="system",service=""} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"port="8080""#), "{text}");
        assert!(!text.contains(r#"port="50000""#), "{text}");
        assert!(
            text.contains(r#"portmon_sockets{proto="tcp",family="ipv4",port="",class="dynamic",service="",state="established"} 3"#),
            "{text}"
        );
        assert!(text.contains("portmon_port_series_folded 3"), "{text}");
        assert!(
            text.contains(r#"portmon_ports_in_use{proto="tcp",class="dynamic"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn under_the_limit_nothing_folds_and_no_netns_label_for_one_namespace() {
        let text = render_with(
            &[
                socket(22, SocketState::Listen),
                socket(22, SocketState::Established),
            ],
            1000,
        );
        assert!(text.contains("portmon_port_series_folded 0"), "{text}");
        assert!(
            text.contains(r#"port="22",class="system",service="",state="established"} 1"#),
            "{text}"
        );
        assert!(!text.contains("netns="), "{text}");
    }
}
