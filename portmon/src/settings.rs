//! What a reload can change while the programs stay attached: the settings
//! the readers (exporter, API) apply at each request.

use crate::registry::Registry;

/// Whether per-port series carry a `netns` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NetnsLabel {
    /// Once more than one network namespace has had sockets or events
    /// (and from then on, until portmon restarts).
    Auto,
    /// Always.
    Always,
}

/// The settings in force; `Config::settings` makes them from a configuration.
#[derive(Debug)]
pub struct Settings {
    /// Service names of ports.
    pub registry: Registry,
    /// Ports with series of their own, per metric.
    pub port_series_limit: usize,
    /// Whether per-port series carry a `netns` label.
    pub netns_label: NetnsLabel,
    /// How many of the busiest destinations get a series of their own.
    pub ephemeral_destinations: usize,
    /// How long a gone namespace's final counts are still exported.
    pub netns_grace: std::time::Duration,
}
