//! `portmon run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Args;

use super::{init_logging, LogFormat, RegistryArgs, EXIT_USAGE};
use crate::{
    config::{Config, ConfigError},
    service::reload::ConfigSource,
    settings::NetnsLabel,
};

/// Flags: every key of the configuration file, by the same name; a flag
/// wins over the file, at start and at each reload.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Configuration file (TOML; keys are these flags' names). Default:
    /// /etc/portmon/portmon.toml if it exists.
    #[arg(long, value_name = "PATH", env = "PORTMON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP server (/metrics, /healthz, /api/v1/…). Default 127.0.0.1:7455.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Most ports with series of their own per metric in /metrics; past it
    /// ports fold into their range class (counters: first come, first
    /// served). Default 1000.
    #[arg(long, value_name = "N")]
    pub port_series_limit: Option<usize>,
    /// When per-port series carry a `netns` label. Default auto.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub netns_label: Option<NetnsLabel>,
    /// Capacity of the kernel's table of followed sockets and their owners.
    /// Default 65536.
    #[arg(long, value_name = "N", value_parser = |s: &str| capacity(s, crate::config::MAX_SOCKETS_CAPACITY))]
    pub sockets_capacity: Option<u32>,
    /// Capacity of the kernel's per-port counters, in blocks of 64 ports.
    /// Default 4096.
    #[arg(long, value_name = "N", value_parser = |s: &str| capacity(s, crate::config::MAX_PORT_STATS_CAPACITY))]
    pub port_stats_capacity: Option<u32>,
    /// Most blocks of 64 ports one network namespace other than the host's
    /// may hold; its counts past them fold into their range class.
    /// Default 1024.
    #[arg(long, value_name = "N", value_parser = |s: &str| capacity(s, crate::config::MAX_PORT_STATS_CAPACITY))]
    pub max_port_blocks_per_namespace: Option<u32>,
    /// Most of the kernel's entries shared by unprivileged users'
    /// namespaces one such user's namespaces may hold, and of the followed
    /// sockets one such user's processes may hold, in percent (1 to 100).
    /// Default 25.
    #[arg(long, value_name = "PERCENT", value_parser = |s: &str| capacity(s, 100))]
    pub max_shared_percent_per_user: Option<u32>,
    /// Seconds a gone network namespace's series are still exported before
    /// they are dropped. Default 300.
    #[arg(long, value_name = "SECONDS")]
    pub netns_grace_seconds: Option<u64>,
    /// How many of the busiest destinations get their own ephemeral
    /// utilization series. Default 10.
    #[arg(long, value_name = "N")]
    pub ephemeral_destinations: Option<usize>,
    /// Directory the container runtimes' state is read under, to name
    /// pods. Default /.
    #[arg(long, value_name = "PATH")]
    pub runtime_state_root: Option<PathBuf>,
    /// An exporter-toolkit web configuration file (YAML): TLS, client
    /// certificates, basic auth. Default: none (plain HTTP).
    #[arg(long, value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Whether the JSON API (/api/v1/…) is served; false leaves /metrics
    /// and /healthz. Default true.
    #[arg(long, value_name = "BOOL")]
    pub api: Option<bool>,
    /// Most HTTP connections served at once. Default 4096.
    #[arg(long, value_name = "N", value_parser = |s: &str| s.parse::<usize>().map_err(|e| e.to_string()).and_then(crate::config::connection_cap))]
    pub max_connections: Option<usize>,
    /// Whether to time how long each TCP connect spends finding a local
    /// port (portmon_connect_port_search_seconds). Default false.
    #[arg(long, value_name = "BOOL")]
    pub connect_search: Option<bool>,
    /// Whether to list the connections of every namespace sharing the
    /// host's established-socket table in one BPF walk of it, where the
    /// kernel allows (false: one sock_diag dump per namespace). Default true.
    #[arg(long, value_name = "BOOL")]
    pub established_walk: Option<bool>,
}

fn capacity(text: &str, max: u32) -> Result<u32, String> {
    let value = text
        .parse::<u32>()
        .map_err(|err| format!("{err}: give 1 to {max}"))?;
    crate::config::map_capacity(value, max)
}

impl RunArgs {
    /// Sets the flags given over `config`.
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(registry) = &self.registry.registry {
            config.registry = Some(registry.clone());
        }
        if let Some(limit) = self.port_series_limit {
            config.port_series_limit = limit;
        }
        if let Some(label) = self.netns_label {
            config.netns_label = label;
        }
        if let Some(n) = self.sockets_capacity {
            config.sockets_capacity = n;
        }
        if let Some(n) = self.port_stats_capacity {
            config.port_stats_capacity = n;
        }
        if let Some(n) = self.max_port_blocks_per_namespace {
            config.max_port_blocks_per_namespace = n;
        }
        if let Some(n) = self.max_shared_percent_per_user {
            config.max_shared_percent_per_user = n;
        }
        if let Some(n) = self.netns_grace_seconds {
            config.netns_grace_seconds = n;
        }
        if let Some(n) = self.ephemeral_destinations {
            config.ephemeral_destinations = n;
        }
        if let Some(root) = &self.runtime_state_root {
            config.runtime_state_root = root.clone();
        }
        if let Some(path) = &self.web_config_file {
            config.web_config_file = Some(path.clone());
        }
        if let Some(api) = self.api {
            config.api = api;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if let Some(on) = self.connect_search {
            config.connect_search = on;
        }
        if let Some(on) = self.established_walk {
            config.established_walk = on;
        }
    }
}

pub fn run(args: RunArgs, log: &str, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log, log_format)?;
    let flags = args.clone();
    let source = ConfigSource {
        path: args.config,
        overrides: Arc::new(move |config| flags.apply(config)),
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(err @ ConfigError::Parse { .. }) => {
            eprintln!("portmon: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(err) => return Err(err.into()),
    };
    // Read while privileged: key files are often root's alone.
    let served = match config.served() {
        Ok(served) => served,
        Err(err) => {
            eprintln!("portmon: {}", crate::report::error_line(&err));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    // Privileged work first, on this thread alone: the runtime's threads
    // would otherwise keep the capabilities given up here.
    let started = crate::daemon::start(config, served)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Requests wait for a shared snapshot on these threads: past a few,
        // more threads only cost memory (a stack and allocator caches each).
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::daemon::serve(started, source))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn every_config_key_is_a_flag() {
        let cli = super::super::Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        let flags: Vec<&str> = run.get_arguments().filter_map(|a| a.get_long()).collect();
        let keys = crate::config::tests::keys();
        assert!(keys.len() >= 7, "{keys:?}");
        for key in keys {
            assert!(flags.contains(&key.as_str()), "no --{key} flag: {flags:?}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let cli = <super::super::Cli as clap::Parser>::try_parse_from([
            "portmon",
            "run",
            "--port-series-limit",
            "7",
            "--netns-label",
            "always",
        ])
        .unwrap();
        let super::super::Command::Run(args) = cli.command else {
            panic!("not run");
        };
        let mut config =
            crate::config::Config::parse("port-series-limit = 50\nsockets-capacity = 9\n", "t".as_ref())
                .unwrap();
        args.apply(&mut config);
        assert_eq!(config.port_series_limit, 7);
        assert_eq!(config.netns_label, crate::settings::NetnsLabel::Always);
        assert_eq!(config.sockets_capacity, 9);
    }
}
