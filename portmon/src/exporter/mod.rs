//! `/metrics`: [`PortmonCollector`], which reads the kernel's counters,
//! the failure log and a fresh inventory at every scrape, as the Prometheus
//! guide to writing exporters asks, and writes their exposition itself
//! (`families` says why).
//!
//! Per-port series exist only for ports in use or with events, up to a
//! limit; beyond it ports fold into their range class (with `port="other"`),
//! and `portmon_port_series_folded` says how many did. Which ports fold,
//! and why a counter's choice is made once, is in `port_series`.
//!
//! Beside it, the `prometheus` crate's process collector exports the
//! daemon's own `process_*` families (memory, CPU, open descriptors, start
//! time), under the names every exporter uses, so the usual dashboards and
//! restart annotations work on portmon as they are.

use std::sync::Arc;

use prometheus::TextEncoder;

mod collector;
mod connect_search;
pub mod definitions;
mod exhaustion;
mod families;
#[cfg(test)]
mod fixture;
mod health;
mod port_families;
mod port_series;
mod source;
mod workloads;

pub use collector::{Exposition, PortmonCollector};
pub use source::{ScrapeInput, ScrapeSource};

use crate::{kernel::bpf::MapUsage, settings::NetnsLabel};

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("the metric definition {name} is not valid")]
    Descriptor {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("cannot register a collector of /metrics")]
    Register(#[source] prometheus::Error),
    #[error("cannot encode the exposition")]
    Encode(#[source] prometheus::Error),
}

/// The `/metrics` endpoint: portmon's collector, and a registry holding
/// the process collector.
pub struct Metrics {
    portmon: Box<dyn Exposition>,
    process: prometheus::Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Collectors that read `source` and this process at each scrape.
    pub fn new<S: ScrapeSource>(source: Arc<S>) -> Result<Self, ExporterError> {
        let process = prometheus::Registry::new();
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(ExporterError::Register)?;
        Ok(Self {
            portmon: Box::new(PortmonCollector::new(source)?),
            process,
        })
    }

    /// One scrape, in the Prometheus text format: portmon's families, then
    /// the `process_*` ones, each group by name.
    pub fn render(&self) -> Result<String, ExporterError> {
        let mut text = self.portmon.expose();
        TextEncoder::new()
            .encode_utf8(&self.process.gather(), &mut text)
            .map_err(ExporterError::Encode)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests;
