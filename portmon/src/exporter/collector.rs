//! portmon's collector: at each scrape, the numbers read then from the
//! kernel maps, the failure log and the inventory, written as the
//! exposition of every family of [`definitions::ALL`] — as the Prometheus
//! guide to writing exporters asks. What it keeps between scrapes only
//! keeps series stable (see `port_series`); no number is cached.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use prometheus::core::Desc;

use super::{
    connect_search, definitions, exhaustion, families::Families, health, port_families,
    port_series::SeriesMemory, workloads, ExporterError, ScrapeInput, ScrapeSource,
};

/// Collects every portmon family from `S` at scrape time.
pub struct PortmonCollector<S> {
    source: Arc<S>,
    memory: Mutex<SeriesMemory>,
}

impl<S> std::fmt::Debug for PortmonCollector<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortmonCollector").finish_non_exhaustive()
    }
}

/// A scrape's exposition of portmon's own families, whatever the source.
pub trait Exposition: Send + Sync {
    fn expose(&self) -> String;
}

impl<S: ScrapeSource> PortmonCollector<S> {
    /// A collector reading `source`, once each family of
    /// [`definitions::ALL`] is found valid (names and labels as Prometheus
    /// spells them).
    pub fn new(source: Arc<S>) -> Result<Self, ExporterError> {
        for d in definitions::ALL {
            let labels = d.labels.iter().map(|l| (*l).to_owned()).collect();
            Desc::new(d.name.to_owned(), d.help.to_owned(), labels, HashMap::new())
                .map_err(|source| ExporterError::Descriptor { name: d.name, source })?;
        }
        Ok(Self {
            source,
            memory: Mutex::new(SeriesMemory::default()),
        })
    }
}

impl<S: ScrapeSource> Exposition for PortmonCollector<S> {
    fn expose(&self) -> String {
        let started = Instant::now();
        self.source.scrape(|input| {
            let gathered = started.elapsed().as_secs_f64();
            // A panic mid-scrape leaves assignments that are still valid.
            let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            build(input, &mut memory, gathered)
        })
    }
}

/// Every family of one scrape; `scrape_seconds` is how long reading the
/// input took (building is small next to it).
fn build(input: &ScrapeInput<'_>, memory: &mut SeriesMemory, scrape_seconds: f64) -> String {
    memory.retain_netns(&port_families::live_namespaces(input));
    let with_netns = memory.with_netns(input.netns_label, port_families::namespaces(input));
    let mut families = Families::new(with_netns);
    let folded = port_families::add(input, memory, &mut families);
    health::add(input, folded, scrape_seconds, &mut families);
    exhaustion::add(input, &mut families);
    connect_search::add(input, &mut families);
    workloads::add(input, &mut families);
    families.finish()
}
