//! portmon's Prometheus collector: the fixed descriptors of every family,
//! and at each scrape the numbers read then from the kernel maps, the
//! failure log and the inventory — as the Prometheus guide to writing
//! exporters asks. Nothing is cached between scrapes.

use std::{collections::HashMap, sync::Arc, time::Instant};

use prometheus::{core::Collector, core::Desc, proto::MetricFamily};

use super::{
    definitions, exhaustion, families::Families, health, port_families, ExporterError, NetnsLabel,
    ScrapeInput, ScrapeSource,
};

/// Collects every portmon family from `S` at scrape time.
pub struct PortmonCollector<S> {
    source: Arc<S>,
    descs: Vec<Desc>,
}

impl<S> std::fmt::Debug for PortmonCollector<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortmonCollector")
            .field("families", &self.descs.len())
            .finish_non_exhaustive()
    }
}

impl<S: ScrapeSource> PortmonCollector<S> {
    /// A collector reading `source`, with a descriptor per family of
    /// [`definitions::ALL`].
    pub fn new(source: Arc<S>) -> Result<Self, ExporterError> {
        let descs = definitions::ALL
            .iter()
            .map(|d| {
                let labels = d.labels.iter().map(|l| (*l).to_owned()).collect();
                Desc::new(d.name.to_owned(), d.help.to_owned(), labels, HashMap::new())
                    .map_err(|source| ExporterError::Descriptor { name: d.name, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { source, descs })
    }
}

impl<S: ScrapeSource> Collector for PortmonCollector<S> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let started = Instant::now();
        self.source
            .scrape(|input| build(input, started.elapsed().as_secs_f64()))
    }
}

/// Every family of one scrape; `scrape_seconds` is how long reading the
/// input took (building is small next to it).
fn build(input: &ScrapeInput<'_>, scrape_seconds: f64) -> Vec<MetricFamily> {
    let with_netns = input.netns_label == NetnsLabel::Always || port_families::namespaces(input) > 1;
    let mut families = Families::new(with_netns);
    let folded = port_families::add(input, &mut families);
    health::add(input, folded, scrape_seconds, &mut families);
    exhaustion::add(input, &mut families);
    families.finish()
}
