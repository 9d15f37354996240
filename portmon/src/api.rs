//! The JSON API: the live inventory (`/api/v1/ports`), joined with the
//! owners the kernel programs recorded and the registry's service names.

use std::collections::HashMap;

use portmon_common::{Owner, Proto};
use serde::{Deserialize, Serialize};

use crate::{exporter::is_listening, inventory::NsSocket, port_class::PortClass, registry::Registry};

/// One socket as the API and `portmon ports` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    pub netns: String,
    pub proto: String,
    pub family: String,
    pub state: String,
    pub local: String,
    pub remote: String,
    pub port: u16,
    pub class: String,
    pub service: String,
    pub uid: u32,
    pub cookie: u64,
    /// Who bound or listened, when a kernel program saw it.
    pub owner: Option<OwnerEntry>,
}

/// The process behind a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerEntry {
    pub pid: u32,
    pub comm: String,
    pub cgroup: u64,
}

/// Which sockets to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

    fn keeps(&self, s: &NsSocket, netns_name: &str) -> bool {
        (!self.listening || is_listening(s.socket.state, s.socket.proto))
            && self.port.is_none_or(|p| s.socket.local.port() == p)
            && self.proto.is_none_or(|p| s.socket.proto == p)
            && self.netns.as_deref().is_none_or(|n| n == netns_name)
    }
}

/// The inventory as entries, filtered, sorted by namespace, protocol, port.
pub fn port_entries(
    sockets: &[NsSocket],
    registry: &Registry,
    owners: &HashMap<u64, Owner>,
    netns_names: &HashMap<u64, String>,
    filter: &PortFilter,
) -> Vec<PortEntry> {
    let mut entries: Vec<PortEntry> = sockets
        .iter()
        .filter_map(|s| {
            let netns = netns_names
                .get(&s.netns)
                .cloned()
                .unwrap_or_else(|| format!("cookie:{}", s.netns));
            if !filter.keeps(s, &netns) {
                return None;
            }
            let port = s.socket.local.port();
            Some(PortEntry {
                netns,
                proto: s.socket.proto.label().to_owned(),
                family: s.socket.family.label().to_owned(),
                state: s.socket.state_label().to_owned(),
                local: s.socket.local.to_string(),
                remote: s.socket.remote.to_string(),
                port,
                class: PortClass::of(port).label().to_owned(),
                service: registry
                    .service_name(port, s.socket.proto.into())
                    .unwrap_or("")
                    .to_owned(),
                uid: s.socket.uid,
                cookie: s.socket.cookie,
                owner: owners.get(&s.socket.cookie).map(|o| OwnerEntry {
                    pid: o.pid,
                    comm: comm(&o.comm),
                    cgroup: o.cgroup,
                }),
            })
        })
        .collect();
    entries
        .sort_by(|a, b| (&a.netns, &a.proto, a.port, &a.state).cmp(&(&b.netns, &b.proto, b.port, &b.state)));
    entries
}

/// A NUL-padded command name as text.
pub fn comm(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

/// Answers one HTTP request.
pub fn route(state: &crate::daemon::State, req: &crate::http::Request) -> crate::http::Response {
    use crate::http::Response;
    match req.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/metrics" => metrics(state),
        "/api/v1/ports" => match PortFilter::from_query(|name| req.param(name).map(str::to_owned)) {
            Ok(filter) => {
                let (snapshot, names) = state.snapshot();
                Response::json(&port_entries(
                    &snapshot.sockets,
                    &state.settings().registry,
                    &state.owners(),
                    &names,
                    &filter,
                ))
            }
            Err(message) => Response::text(400, format!("{message}\n")),
        },
        "/api/v1/counters" => Response::json(&counter_entries(&state.ports())),
        "/api/v1/ephemeral" => {
            let (snapshot, names) = state.snapshot();
            Response::json(&EphemeralView::new(state.ephemeral(&snapshot), &names))
        }
        "/api/v1/failures" => {
            let limit = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            Response::json(&state.recent_failures(limit))
        }
        _ => Response::text(
            404,
            "not found: try /metrics, /healthz, /api/v1/ports, /api/v1/ephemeral, /api/v1/counters, /api/v1/failures\n",
        ),
    }
}

fn metrics(state: &crate::daemon::State) -> crate::http::Response {
    let started = std::time::Instant::now();
    // The sock_diag dumps take most of a scrape, on every core: the kernel
    // maps are read beside them.
    let ((ports, failures, bind_before_connect, maps), (snapshot, names)) = std::thread::scope(|scope| {
        let kernel = scope.spawn(|| {
            (
                state.ports(),
                state.failure_counts(),
                state.bind_before_connect(),
                state.map_usage(),
            )
        });
        let inventory = state.snapshot();
        let kernel = kernel
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (kernel, inventory)
    });
    let assessing = std::time::Instant::now();
    let ephemeral = state.ephemeral(&snapshot);
    let ephemeral_seconds = assessing.elapsed().as_secs_f64();
    let settings = state.settings();
    let input = crate::exporter::ScrapeInput {
        ports: &ports,
        failures: &failures,
        sockets: &snapshot.sockets,
        registry: &settings.registry,
        netns_names: &names,
        health: state.health(),
        maps: &maps,
        programs: &state.programs,
        port_series_limit: settings.port_series_limit,
        netns_label: settings.netns_label,
        ephemeral: &ephemeral,
        ephemeral_seconds,
        bind_before_connect: &bind_before_connect,
        inventory_errors: &snapshot.dump_errors,
    };
    let body = crate::exporter::render(&input, started.elapsed().as_secs_f64());
    crate::http::Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: body.into_bytes(),
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

fn counter_entries(ports: &[crate::counters::PortCount]) -> Vec<CounterEntry> {
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
    pub pools: Vec<Named<crate::ephemeral::PoolUsage>>,
    pub destinations: Vec<Named<crate::ephemeral::DestinationUsage>>,
}

/// A record with its namespace's name beside the cookie.
#[derive(Debug, Serialize)]
pub struct Named<T> {
    pub netns_name: String,
    #[serde(flatten)]
    pub record: T,
}

impl EphemeralView {
    fn new(report: crate::ephemeral::EphemeralReport, names: &HashMap<u64, String>) -> Self {
        let name = |netns: u64| {
            names
                .get(&netns)
                .cloned()
                .unwrap_or_else(|| format!("cookie:{netns}"))
        };
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
        }
    }
}
