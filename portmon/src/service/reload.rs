//! SIGHUP: read the configuration file again and apply what can change
//! while the programs stay attached — so the kernel's counters, which live
//! in their maps, go on counting. Keys that size the maps or the listening
//! socket take effect at the next restart, and the log says so.

use std::{path::PathBuf, sync::Arc};

use crate::{
    config::{Config, ConfigError, DEFAULT_PATH},
    registry::{Registry, RegistryError},
    state::State,
};

/// What the command line sets over the file; applied again at each reload
/// so flags keep winning.
pub type Overrides = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Where the configuration comes from.
#[derive(Clone)]
pub struct ConfigSource {
    /// `--config`, or `None` for the default path (optional there).
    pub path: Option<PathBuf>,
    /// The command line's flags.
    pub overrides: Overrides,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ConfigSource {
    /// The file and the flags, merged.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.path.as_deref())?;
        (self.overrides)(&mut config);
        Ok(config)
    }

    /// The file read, for logs.
    pub fn shown(&self) -> String {
        self.path
            .as_deref()
            .map_or(DEFAULT_PATH.into(), |p| p.display().to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Reads the configuration again and applies it to `state`; returns the
/// configuration now in force. On error nothing changes but the record of
/// the last reload, which `/metrics` exports.
pub fn reload(state: &State, running: &Config, source: &ConfigSource) -> Result<Config, ReloadError> {
    let outcome = apply(state, running, source);
    state.record_reload(outcome.is_ok());
    outcome
}

fn apply(state: &State, running: &Config, source: &ConfigSource) -> Result<Config, ReloadError> {
    let mut wanted = source.load()?;
    // Read again even when the path is the same: `portmon registry update`
    // replaces the file in place.
    let registry = Registry::load(wanted.registry.as_deref())?;
    let needs_restart = [
        ("listen", wanted.listen != running.listen),
        (
            "sockets-capacity",
            wanted.sockets_capacity != running.sockets_capacity,
        ),
        (
            "port-stats-capacity",
            wanted.port_stats_capacity != running.port_stats_capacity,
        ),
        (
            "max-port-blocks-per-namespace",
            wanted.max_port_blocks_per_namespace != running.max_port_blocks_per_namespace,
        ),
        (
            "max-shared-percent-per-user",
            wanted.max_shared_percent_per_user != running.max_shared_percent_per_user,
        ),
        (
            "runtime-state-root",
            wanted.runtime_state_root != running.runtime_state_root,
        ),
        (
            "web-config-file",
            wanted.web_config_file != running.web_config_file,
        ),
        ("api", wanted.api != running.api),
        (
            "max-connections",
            wanted.max_connections != running.max_connections,
        ),
        ("connect-search", wanted.connect_search != running.connect_search),
        (
            "established-walk",
            wanted.established_walk != running.established_walk,
        ),
    ];
    for (key, changed) in needs_restart {
        if changed {
            tracing::warn!(
                key,
                config = %source.shown(),
                "{key} changed: it takes effect at the next restart"
            );
        }
    }
    wanted.listen = running.listen;
    wanted.sockets_capacity = running.sockets_capacity;
    wanted.port_stats_capacity = running.port_stats_capacity;
    wanted.max_port_blocks_per_namespace = running.max_port_blocks_per_namespace;
    wanted.max_shared_percent_per_user = running.max_shared_percent_per_user;
    wanted.runtime_state_root.clone_from(&running.runtime_state_root);
    wanted.web_config_file = running.web_config_file.clone();
    wanted.api = running.api;
    wanted.max_connections = running.max_connections;
    wanted.connect_search = running.connect_search;
    wanted.established_walk = running.established_walk;
    let entries = registry.source().entries;
    state.replace_settings(wanted.settings(registry));
    tracing::info!(
        config = %source.shown(),
        port_series_limit = wanted.port_series_limit,
        netns_label = ?wanted.netns_label,
        ephemeral_destinations = wanted.ephemeral_destinations,
        registry_entries = entries,
        "configuration reloaded"
    );
    Ok(wanted)
}
