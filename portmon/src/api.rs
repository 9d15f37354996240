//! The JSON API: the live inventory (`/api/v1/ports`), joined with the
//! owners the kernel programs recorded and the registry's service names.

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use portmon_common::{Owner, Proto};
use serde::{Deserialize, Serialize};

use crate::{
    exhaustion::{DestinationUsage, EphemeralReport, ListenerInPool, PoolUsage, ReservedPortsFix},
    exporter::Metrics,
    http::{Request, Response, Service},
    kernel::{
        bpf::counters::PortCount,
        procfs::comm_text,
        sock_diag::{is_listening, NsSocket},
    },
    namespaces::display_name,
    port_class::PortClass,
    registry::Registry,
    report::error_line,
    single_flight::SingleFlight,
    state::State,
};

/// One socket as the API and `portmon ports` show it. The daemon's
/// answers borrow what they can (labels, names, services): a large host's
/// inventory is tens of thousands of entries, serialized while many clients
/// wait, and a copy of every field per entry was most of a scrape's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry<'a> {
    pub netns: Cow<'a, str>,
    pub proto: Cow<'a, str>,
    pub family: Cow<'a, str>,
    pub state: Cow<'a, str>,
    pub local: Cow<'a, str>,
    pub remote: Cow<'a, str>,
    pub port: u16,
    pub class: Cow<'a, str>,
    pub service: Cow<'a, str>,
    pub uid: u32,
    pub cookie: u64,
    /// Who bound or listened, when a kernel program saw it; else the
    /// process found holding the socket among every process's descriptors.
    pub owner: Option<OwnerEntry<'a>>,
}

impl PortEntry<'_> {
    /// The entry with nothing borrowed, to outlive what it was made from.
    pub fn into_owned(self) -> PortEntry<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        PortEntry {
            netns: own(self.netns),
            proto: own(self.proto),
            family: own(self.family),
            state: own(self.state),
            local: own(self.local),
            remote: own(self.remote),
            port: self.port,
            class: own(self.class),
            service: own(self.service),
            uid: self.uid,
            cookie: self.cookie,
            owner: self.owner.map(|o| OwnerEntry {
                pid: o.pid,
                comm: o.comm,
                cgroup: o.cgroup,
                unit: o.unit.map(own),
            }),
        }
    }
}

/// The process behind a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerEntry<'a> {
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup: u64,
    /// The systemd unit the cgroup's path names (`nginx.service`), if any;
    /// `null` (never left out) otherwise. An older daemon does not send it.
    #[serde(default)]
    pub unit: Option<Cow<'a, str>>,
}

/// Which sockets to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortFilter {
    pub listening: bool,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
    pub netns: Option<String>,
}

impl PortFilter {
    /// From query parameters (`listening=1&port=80&proto=tcp&netns=host`).
    pub fn from_query(param: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let port = match param("port") {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| format!("bad port {p:?}: ports are 0-65535"))?,
            ),
            None => None,
        };
        let proto = match param("proto").as_deref() {
            Some("tcp") => Some(Proto::Tcp),
            Some("udp") => Some(Proto::Udp),
            Some(other) => return Err(format!("bad proto {other:?}: tcp or udp")),
            None => None,
        };
        let listening = matches!(param("listening").as_deref(), Some("1" | "true"));
        Ok(Self {
            listening,
            port,
            proto,
            netns: param("netns"),
        })
    }

    /// Whether `s` is listed, its namespace named by `netns_names`.
    fn keeps(&self, s: &NsSocket, netns_names: &HashMap<u64, String>) -> bool {
        (!self.listening || is_listening(s.socket.state, s.socket.proto))
            && self.port.is_none_or(|p| s.socket.local.port() == p)
            && self.proto.is_none_or(|p| s.socket.proto == p)
            && self
                .netns
                .as_deref()
                .is_none_or(|n| netns_name(netns_names, s.netns) == n)
    }
}

/// A namespace's name, borrowed unless it has none to borrow.
fn netns_name(names: &HashMap<u64, String>, cookie: u64) -> Cow<'_, str> {
    match names.get(&cookie) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(display_name(names, cookie)),
    }
}

/// The inventory's sockets that a filter keeps, sorted by namespace,
/// protocol, port and state, as [`PortEntry`]s made one at a time: the
/// daemon writes a large host's answer without holding every entry at once.
#[derive(Debug)]
pub struct PortListing<'a> {
    sockets: &'a [NsSocket],
    order: Vec<usize>,
    registry: &'a Registry,
    /// By socket cookie.
    owners: &'a HashMap<u64, Owner>,
    /// Owners' units by cgroup id.
    units: &'a HashMap<u64, String>,
    netns_names: &'a HashMap<u64, String>,
}

impl<'a> PortListing<'a> {
    pub fn new(
        sockets: &'a [NsSocket],
        registry: &'a Registry,
        owners: &'a HashMap<u64, Owner>,
        units: &'a HashMap<u64, String>,
        netns_names: &'a HashMap<u64, String>,
        filter: &PortFilter,
    ) -> Self {
        let mut order: Vec<usize> = (0..sockets.len())
            .filter(|&i| filter.keeps(&sockets[i], netns_names))
            .collect();
        let key = |&i: &usize| {
            let s = &sockets[i].socket;
            (
                netns_name(netns_names, sockets[i].netns),
                s.proto.label(),
                s.local.port(),
                s.state_label(),
            )
        };
        order.sort_by(|a, b| key(a).cmp(&key(b)));
        Self {
            sockets,
            order,
            registry,
            owners,
            units,
            netns_names,
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = PortEntry<'a>> + '_ {
        self.order.iter().map(|&i| self.entry(&self.sockets[i]))
    }

    fn entry(&self, s: &NsSocket) -> PortEntry<'a> {
        let port = s.socket.local.port();
        PortEntry {
            netns: netns_name(self.netns_names, s.netns),
            proto: s.socket.proto.label().into(),
            family: s.socket.family.label().into(),
            state: s.socket.state_label().into(),
            local: s.socket.local.to_string().into(),
            remote: s.socket.remote.to_string().into(),
            port,
            class: PortClass::of(port).label().into(),
            service: self
                .registry
                .service_name(port, s.socket.proto.into())
                .unwrap_or("")
                .into(),
            uid: s.socket.uid,
            cookie: s.socket.cookie,
            owner: self.owners.get(&s.socket.cookie).map(|o| OwnerEntry {
                pid: o.pid,
                comm: comm_text(&o.comm),
                cgroup: o.cgroup,
                unit: self.units.get(&o.cgroup).map(|u| u.as_str().into()),
            }),
        }
    }
}

impl Serialize for PortListing<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.entries())
    }
}

/// What the daemon answers over HTTP: `/metrics`, `/healthz`, and the
/// JSON API unless it is turned off (`api = false`).
#[derive(Debug)]
pub struct Endpoints {
    state: Arc<State>,
    metrics: Metrics,
    api: bool,
    /// `/metrics` requests that arrive during a scrape share its exposition.
    scrapes: SingleFlight<Response>,
    /// `/api/v1/ports` requests with the same filter share one answer: on a
    /// large host it runs to megabytes, which 64 clients must not multiply.
    ports: SingleFlight<Response, PortFilter>,
}

impl Endpoints {
    /// `/metrics` through `metrics`, the rest from `state`; the JSON API
    /// only if `api`.
    pub fn new(state: Arc<State>, metrics: Metrics, api: bool) -> Self {
        Self {
            state,
            metrics,
            api,
            scrapes: SingleFlight::default(),
            ports: SingleFlight::default(),
        }
    }

    fn not_found(&self) -> Response {
        let paths = if self.api {
            "/metrics, /healthz, /api/v1/ports, /api/v1/ephemeral, /api/v1/counters, /api/v1/failures"
        } else {
            "/metrics, /healthz (the JSON API is off: api = false)"
        };
        Response::text(404, format!("not found: try {paths}\n"))
    }
}

impl Service for Endpoints {
    fn answer_now(&self, req: &Request) -> Option<Response> {
        (req.path == "/healthz").then(|| match self.state.liveness() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        })
    }

    fn answer(&self, req: &Request) -> Response {
        if req.path == "/metrics" {
            return (*self.scrapes.run(|| scrape(&self.metrics)).0).clone();
        }
        if !self.api {
            return self.not_found();
        }
        let state = &self.state;
        match req.path.as_str() {
            "/api/v1/ports" => match PortFilter::from_query(|name| req.param(name).map(str::to_owned)) {
                Ok(filter) => {
                    let answer = self.ports.run_for(filter.clone(), || {
                        let inventoried = state.snapshot();
                        let listed = |s: &NsSocket| filter.keeps(s, &inventoried.names);
                        let owners = state.owners_of(&inventoried.snapshot.sockets, &listed);
                        let units = state.units(owners.values().map(|o| o.cgroup));
                        Response::json(&PortListing::new(
                            &inventoried.snapshot.sockets,
                            &state.settings().registry,
                            &owners,
                            &units,
                            &inventoried.names,
                            &filter,
                        ))
                    });
                    (*answer.0).clone()
                }
                Err(message) => Response::text(400, format!("{message}\n")),
            },
            "/api/v1/counters" => Response::json(&counter_entries(&state.ports())),
            "/api/v1/ephemeral" => {
                let inventoried = state.snapshot();
                Response::json(&EphemeralView::new(
                    state.ephemeral(&inventoried.snapshot),
                    &inventoried.names,
                ))
            }
            "/api/v1/failures" => {
                let limit = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                Response::json(&state.recent_failures(limit))
            }
            _ => self.not_found(),
        }
    }
}

fn scrape(metrics: &Metrics) -> Response {
    match metrics.render() {
        Ok(body) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: body.into(),
        },
        Err(err) => {
            tracing::error!("scrape failed: {}", error_line(&err));
            Response::text(500, "scrape failed: see portmon's log\n")
        }
    }
}

/// Kernel counters of one port, as JSON.
#[derive(Debug, Serialize)]
pub struct CounterEntry {
    pub netns: u64,
    pub proto: Proto,
    pub family: portmon_common::Family,
    pub role: portmon_common::Role,
    pub port: u16,
    pub binds: u64,
    pub listens: u64,
    pub connects: u64,
    pub live: i64,
}

fn counter_entries(ports: &[PortCount]) -> Vec<CounterEntry> {
    ports
        .iter()
        .map(|p| CounterEntry {
            netns: p.netns,
            proto: p.proto,
            family: p.family,
            role: p.role,
            port: p.port,
            binds: p.stats.binds,
            listens: p.stats.listens,
            connects: p.stats.connects,
            live: p.stats.live,
        })
        .collect()
}

/// The exhaustion report as JSON, namespaces by name.
#[derive(Debug, Serialize)]
pub struct EphemeralView {
    pub pools: Vec<Named<PoolUsage>>,
    pub destinations: Vec<Named<DestinationUsage>>,
    /// Ports listened on inside their namespace's pool.
    pub listeners: Vec<Named<ListenerInPool>>,
    /// The `ip_local_reserved_ports` value that takes them out of it.
    pub reserved_ports_fixes: Vec<Named<ReservedPortsFix>>,
}

/// A record with its namespace's name beside the cookie.
#[derive(Debug, Serialize)]
pub struct Named<T> {
    pub netns_name: String,
    #[serde(flatten)]
    pub record: T,
}

impl EphemeralView {
    fn new(report: EphemeralReport, names: &HashMap<u64, String>) -> Self {
        let name = |netns: u64| display_name(names, netns);
        Self {
            pools: report
                .pools
                .into_iter()
                .map(|record| Named {
                    netns_name: name(record.netns),
                    record,
                })
                .collect(),
            destinations: report
                .destinations
                .into_iter()
                .map(|record| Named {
                    netns_name: name(record.netns),
                    record,
                })
                .collect(),
            listeners: report
                .listeners
                .into_iter()
                .map(|record| Named {
                    netns_name: name(record.netns),
                    record,
                })
                .collect(),
            reserved_ports_fixes: report
                .reserved_ports_fixes
                .into_iter()
                .map(|record| Named {
                    netns_name: name(record.netns),
                    record,
                })
                .collect(),
        }
    }
}
