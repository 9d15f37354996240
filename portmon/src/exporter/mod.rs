//! `/metrics`: a Prometheus registry holding [`PortmonCollector`], which
//! reads the kernel's counters, the failure log and a fresh inventory at
//! every scrape, as the Prometheus guide to writing exporters asks.
//!
//! Per-port series exist only for ports in use or with events, up to a
//! limit; beyond it the least busy ports fold into their range class (with
//! `port=""`), and `portmon_port_series_folded` says how many did.

use std::{collections::HashMap, sync::Arc};

use portmon_common::Proto;
use prometheus::TextEncoder;

mod collector;
pub mod definitions;
mod exhaustion;
mod families;
#[cfg(test)]
mod fixture;
mod health;
mod port_families;
mod port_series;
mod source;

pub use collector::PortmonCollector;
pub use source::{ScrapeInput, ScrapeSource};

use crate::inventory::SocketState;

/// Whether per-port series carry a `netns` label.
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

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("the metric definition {name} is not valid")]
    Descriptor {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("cannot register portmon's collector")]
    Register(#[source] prometheus::Error),
    #[error("cannot encode the exposition")]
    Encode(#[source] prometheus::Error),
}

/// The `/metrics` endpoint's registry, with portmon's collector in it.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
}

impl Metrics {
    /// A registry whose one collector reads `source` at each scrape.
    pub fn new<S: ScrapeSource>(source: Arc<S>) -> Result<Self, ExporterError> {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(PortmonCollector::new(source)?))
            .map_err(ExporterError::Register)?;
        Ok(Self { registry })
    }

    /// One scrape, in the Prometheus text format.
    pub fn render(&self) -> Result<String, ExporterError> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(ExporterError::Encode)
    }
}

/// What `ss -l` counts as listening.
pub fn is_listening(state: SocketState, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => state == SocketState::Listen,
        Proto::Udp => state == SocketState::Close,
    }
}

/// The name people know a namespace by, or its cookie if it has none.
fn netns_name(names: &HashMap<u64, String>, cookie: u64) -> String {
    names
        .get(&cookie)
        .cloned()
        .unwrap_or_else(|| format!("cookie:{cookie}"))
}

#[cfg(test)]
mod tests {
    use super::{
        fixture::{Fixture, Host},
        *,
    };

    const HOST: u64 = 1;

    fn start(host: Host) -> (Arc<Fixture>, Metrics) {
        let fixture = Arc::new(Fixture {
            host: std::sync::Mutex::new(host),
        });
        let metrics = Metrics::new(fixture.clone()).expect("a valid collector");
        (fixture, metrics)
    }

    fn scrape(metrics: &Metrics) -> String {
        metrics.render().expect("an exposition")
    }

    #[test]
    fn ports_past_the_limit_fold_into_their_class_and_are_counted() {
        let mut host = Host {
            port_series_limit: 2,
            ..Host::default()
        };
        // Two listeners (ranked first), three busy client ports.
        host.socket(HOST, 80, SocketState::Listen);
        host.socket(HOST, 8080, SocketState::Listen);
        for port in [50_000, 50_001, 50_002] {
            host.socket(HOST, port, SocketState::Established);
        }
        let (_, metrics) = start(host);
        let text = scrape(&metrics);
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
        let mut host = Host::default();
        host.socket(HOST, 22, SocketState::Listen);
        host.socket(HOST, 22, SocketState::Established);
        let (_, metrics) = start(host);
        let text = scrape(&metrics);
        assert!(text.contains("portmon_port_series_folded 0"), "{text}");
        assert!(
            text.contains(r#"port="22",class="system",service="",state="established"} 1"#),
            "{text}"
        );
        assert!(!text.contains("netns="), "{text}");
    }

    #[test]
    fn every_series_carries_the_labels_its_definition_names() {
        for label in [NetnsLabel::Auto, NetnsLabel::Always] {
            let mut host = Host {
                port_series_limit: 1,
                netns_label: label,
                ..Host::default()
            };
            host.socket(HOST, 22, SocketState::Listen);
            host.socket(HOST, 40_000, SocketState::Established);
            host.binds(HOST, 22, 1);
            host.bind_errors(HOST, 80, 1);
            let (fixture, _) = start(host);
            let collector = PortmonCollector::new(fixture).unwrap();
            let gathered = prometheus::core::Collector::collect(&collector);
            assert!(gathered.len() > 10, "{gathered:?}");
            for family in gathered {
                let def = definitions::ALL
                    .iter()
                    .find(|d| d.name == family.name())
                    .unwrap_or_else(|| panic!("{} has no definition", family.name()));
                assert_eq!(family.get_field_type(), def.kind, "{}", def.name);
                let want: Vec<&str> = def.label_names(label == NetnsLabel::Always).collect();
                for m in family.get_metric() {
                    let names: Vec<&str> = m.get_label().iter().map(|l| l.name()).collect();
                    assert_eq!(names, want, "{}", def.name);
                }
            }
        }
    }
}
