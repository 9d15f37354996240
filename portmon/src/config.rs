//! Configuration: a TOML file whose keys are the `portmon run` flags'
//! names, flags winning over the file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Where `portmon run` looks for its configuration when given no `--config`.
pub const DEFAULT_PATH: &str = "/etc/portmon/portmon.toml";

/// Default address of the HTTP server: localhost only, port 7455 — in an
/// IANA-unassigned block (7444-7470, tcp and udp) and outside 9100-9999,
/// which Prometheus' list of exporter default ports has used up.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7455";

/// Everything `portmon run` can be told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Config {
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/api/v1/…`).
    pub listen: SocketAddr,
    /// Port registry file (IANA CSV or /etc/services format); `None` picks
    /// /var/lib/portmon/service-names-port-numbers.csv, else /etc/services.
    pub registry: Option<PathBuf>,
    /// Capacity of the kernel's table of the sockets it follows, with their
    /// owners (bound, listening or connected outbound, and still open);
    /// rounded up to a power of two.
    #[serde(deserialize_with = "sockets_capacity")]
    pub sockets_capacity: u32,
    /// Capacity of the kernel's per-port counters, in blocks of 64 ports
    /// (per namespace, protocol, family and kind of counter).
    #[serde(deserialize_with = "port_stats_capacity")]
    pub port_stats_capacity: u32,
    /// Most blocks of the per-port counters one network namespace other
    /// than the host's may hold; its counts past them go to its range
    /// class (`port="other"`), so that no namespace starves the others.
    #[serde(deserialize_with = "port_blocks_per_namespace")]
    pub max_port_blocks_per_namespace: u32,
    /// Most of the entries the namespaces of unprivileged users share (per
    /// map: tables, blocks, pools) one such user's namespaces may hold, and
    /// of the followed sockets' slots one such user's processes may hold,
    /// in percent; what does not fit is counted as an overflow, so that no
    /// user crowds out another's namespaces or sockets.
    #[serde(deserialize_with = "shared_percent_per_user")]
    pub max_shared_percent_per_user: u32,
    /// Seconds a gone network namespace's series are still exported (its
    /// final counts) before every trace of it is dropped.
    pub netns_grace_seconds: u64,
    /// Most ports with series of their own per metric in /metrics; past
    /// it ports fold into their range class (`port="other"`). Counters: first
    /// come, first served, for the daemon's lifetime; gauges: the busiest.
    pub port_series_limit: usize,
    /// `auto`: a `netns` label once more than one network namespace has
    /// had sockets or events (then until restart); `always`: on every
    /// per-port series.
    pub netns_label: crate::settings::NetnsLabel,
    /// How many of the busiest destinations get their own
    /// `portmon_ephemeral_destination_utilization_ratio` series.
    pub ephemeral_destinations: usize,
    /// Directory the container runtimes' state directories are read under
    /// (`run/containerd/…`, `run/containers/storage/…`,
    /// `var/lib/containers/storage/…`), to name pods: `/` on the host,
    /// where a container mounts them from the host otherwise.
    pub runtime_state_root: PathBuf,
    /// An exporter-toolkit web configuration file (YAML, as node_exporter's
    /// `--web.config.file`): TLS, client certificates, basic auth.
    pub web_config_file: Option<PathBuf>,
    /// Whether the JSON API (`/api/v1/…`) is served; `false` leaves
    /// `/metrics` and `/healthz` only.
    pub api: bool,
    /// Most HTTP connections served at once; more wait in the accept queue.
    #[serde(deserialize_with = "max_connections")]
    pub max_connections: usize,
    /// Whether to time how long each TCP connect spends finding a local
    /// port (`portmon_connect_port_search_seconds`), which grows as a pool
    /// fills, before connects fail. Costs a `sock_ops` program and a hash
    /// insert and delete per connect.
    pub connect_search: bool,
    /// Whether the connections of the namespaces sharing the host's
    /// established-socket table are listed in one BPF walk of it, where
    /// the kernel loads BPF iterators, rather than by one dump per
    /// namespace, each walking the whole table.
    pub established_walk: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Localhost: exposing metrics beyond the host is an operator's choice.
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7455))),
            // Chosen at load time, see `registry`.
            registry: None,
            // 65,536 sockets followed at once, 76 bytes each in the kernel (4.75 MiB).
            sockets_capacity: portmon_common::capacity::SOCKETS,
            // 4,096 blocks of 64 ports, 590 bytes each in the kernel (2.4 MB), mapped
            // into the daemon: a whole default ephemeral range takes 441 blocks per
            // protocol and family.
            port_stats_capacity: portmon_common::capacity::PORT_STATS,
            // 1,024 blocks: 5,440 ports in each of a namespace's (at most 12) tables.
            max_port_blocks_per_namespace: portmon_common::capacity::BLOCKS_PER_NAMESPACE,
            // A quarter: room for four users whose namespaces fill it.
            max_shared_percent_per_user: portmon_common::capacity::OWNER_PERCENT,
            // Five minutes: a scrape interval or several, for the last values to be read.
            netns_grace_seconds: 300,
            // Enough for every listener of a busy host; Prometheus copes with it.
            port_series_limit: 1000,
            // A single-namespace host keeps its series free of a label that says nothing.
            netns_label: crate::settings::NetnsLabel::Auto,
            // Enough to name the culprit; every destination would be unbounded.
            ephemeral_destinations: crate::exhaustion::DEFAULT_TOP_DESTINATIONS,
            // The runtimes' own places on a host.
            runtime_state_root: PathBuf::from("/"),
            // Plain HTTP: TLS needs certificates only an operator has.
            web_config_file: None,
            // The CLI's `portmon ports` reads it; a DaemonSet on node IPs turns it off.
            api: true,
            // See `http::Limits`.
            max_connections: crate::http::Limits::default().max_connections,
            // Off: its cost per connect is more than the rest of portmon's
            // (docs/performance.md), and most hosts are far from a full pool.
            connect_search: false,
            // On: where it loads, a scrape of many namespaces costs about
            // what one of the same sockets does (docs/performance.md).
            established_walk: true,
        }
    }
}

/// Largest `sockets-capacity`: 16 Mi sockets, 1.2 GB of kernel memory.
pub const MAX_SOCKETS_CAPACITY: u32 = 1 << 24;
/// Largest `port-stats-capacity`: 1 Mi blocks, 620 MB of kernel memory.
pub const MAX_PORT_STATS_CAPACITY: u32 = 1 << 20;

/// A map capacity the kernel will create: at least 1, at most `max`.
pub fn map_capacity(value: u32, max: u32) -> Result<u32, String> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is out of range: give 1 to {max}"))
    }
}

/// Largest `max-connections`: beyond, descriptors run out before it binds.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// A connection cap: at least 1, at most [`MAX_CONNECTIONS`].
pub fn connection_cap(value: usize) -> Result<usize, String> {
    if (1..=MAX_CONNECTIONS).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is out of range: give 1 to {MAX_CONNECTIONS}"))
    }
}

fn max_connections<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    connection_cap(usize::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

fn sockets_capacity<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    map_capacity(u32::deserialize(deserializer)?, MAX_SOCKETS_CAPACITY).map_err(serde::de::Error::custom)
}

fn port_stats_capacity<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    map_capacity(u32::deserialize(deserializer)?, MAX_PORT_STATS_CAPACITY).map_err(serde::de::Error::custom)
}

fn port_blocks_per_namespace<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    map_capacity(u32::deserialize(deserializer)?, MAX_PORT_STATS_CAPACITY).map_err(serde::de::Error::custom)
}

fn shared_percent_per_user<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    map_capacity(u32::deserialize(deserializer)?, 100).map_err(serde::de::Error::custom)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A web configuration file that cannot be served as written.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    WebConfig(#[from] crate::http::WebConfigError),
    #[error("bad web config {path}: TLS")]
    Tls {
        path: PathBuf,
        #[source]
        source: crate::http::TlsError,
    },
}

impl Config {
    /// The part a reload can change, with its registry loaded.
    pub fn settings(&self, registry: crate::registry::Registry) -> crate::settings::Settings {
        crate::settings::Settings {
            registry,
            port_series_limit: self.port_series_limit,
            netns_label: self.netns_label,
            ephemeral_destinations: self.ephemeral_destinations,
            netns_grace: std::time::Duration::from_secs(self.netns_grace_seconds),
        }
    }

    /// How the HTTP server serves: its limits, and the web configuration
    /// file's TLS and basic auth (certificates read now).
    pub fn served(&self) -> Result<crate::http::Served, ServingError> {
        let limits = crate::http::Limits {
            max_connections: self.max_connections,
            ..crate::http::Limits::default()
        };
        match &self.web_config_file {
            None => Ok(crate::http::Served::plain(limits)),
            Some(path) => {
                let web = crate::http::WebConfig::load(path)?;
                crate::http::Served::new(limits, &web).map_err(|source| ServingError::Tls {
                    path: path.clone(),
                    source,
                })
            }
        }
    }

    /// Reads a config file; a missing default file is not an error.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses config text; errors name the file, line and key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let mut message = err.message().trim().to_owned();
            if let Some(start) = err.span().map(|span| span.start.min(text.len())) {
                let line = text[..start].matches('\n').count() + 1;
                let line_text = text.lines().nth(line - 1).unwrap_or("");
                // toml names unknown keys itself, not keys with bad values.
                match line_text.split_once('=').map(|(key, _)| key.trim()) {
                    Some(key) if !key.is_empty() && !message.contains(key) => {
                        message = format!("line {line}, key `{key}`: {message}");
                    }
                    _ => message = format!("line {line}: {message}"),
                }
            }
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every key, as serde lists them when it meets an unknown one.
    pub(crate) fn keys() -> Vec<String> {
        let err = parse("no-such-key = 1").unwrap_err();
        let (_, expected) = err.split_once("expected one of").expect(&err);
        expected
            .split(',')
            .map(|k| k.trim().trim_matches('`').to_owned())
            .filter(|k| !k.is_empty())
            .collect()
    }

    #[test]
    fn shipped_file_shows_every_key_with_its_default() {
        let shipped = include_str!("../../deploy/portmon.toml");
        // `#key = value` lines; prose comments start with `# `.
        let settings: Vec<&str> = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "))
            .collect();
        let mut config = parse(&settings.join("\n")).unwrap();
        // The registry's default is chosen at load time; the file shows the path preferred.
        assert_eq!(
            config.registry.as_deref(),
            Some(Path::new(crate::registry::DEFAULT_IANA_PATH))
        );
        config.registry = None;
        // No web configuration unless asked for; the file shows where it goes.
        assert_eq!(
            config.web_config_file.as_deref(),
            Some(Path::new("/etc/portmon/web-config.yml"))
        );
        config.web_config_file = None;
        assert_eq!(config, Config::default());
        let shown: Vec<&str> = settings
            .iter()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        let keys = keys();
        assert!(keys.len() >= 7, "{keys:?}");
        for key in keys {
            assert!(
                shown.contains(&key.as_str()),
                "{key} is not in deploy/portmon.toml"
            );
        }
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(parse(""), Ok(Config::default()));
    }

    #[test]
    fn keys_are_the_flag_names() {
        let config =
            parse("listen = \"0.0.0.0:9000\"\nregistry = \"/tmp/x.csv\"\nsockets-capacity = 1024\n").unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.registry.as_deref(), Some(Path::new("/tmp/x.csv")));
        assert_eq!(config.sockets_capacity, 1024);
        let config = parse("netns-grace-seconds = 5\nmax-port-blocks-per-namespace = 120\n").unwrap();
        let settings = config.settings(crate::registry::Registry::empty());
        assert_eq!(settings.netns_grace, std::time::Duration::from_secs(5));
        assert_eq!(config.max_port_blocks_per_namespace, 120);
        assert!(parse("connect-search = true").unwrap().connect_search);
        assert!(!parse("established-walk = false").unwrap().established_walk);
        assert!(Config::default().established_walk);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("listen = \"127.0.0.1:7455\"\nlisen = 1\n", "line 2", "lisen"),
            ("\n\nlisten = \"nonsense\"", "line 3", "invalid socket address"),
            ("sockets-capacity = -1", "line 1", "sockets-capacity"),
            ("\nport-stats-capacity = 0", "line 2", "give 1 to"),
            ("sockets-capacity = 99999999", "line 1", "give 1 to 16777216"),
            ("max-connections = 0", "line 1", "give 1 to"),
            ("max-port-blocks-per-namespace = 0", "line 1", "give 1 to"),
            ("max-shared-percent-per-user = 101", "line 1", "give 1 to 100"),
            ("netns-grace-seconds = -5", "line 1", "netns-grace-seconds"),
            ("api = \"no\"", "line 1", "api"),
            ("connect-search = 1", "line 1", "connect-search"),
        ];
        for (text, line, word) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("bad config test.toml: "), "{err}");
            assert!(err.contains(line) && err.contains(word), "{text:?} gave {err}");
        }
    }
}
