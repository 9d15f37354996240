//! Which daemon a client command asks, and what it uses without one: the
//! flags `ports` and `doctor` share.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use clap::Args;

use super::RegistryArgs;
use crate::config::{Config, ConfigError};

/// The daemon to ask and, without one, the registry for a snapshot of the
/// command's own.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// Address of the daemon to ask. Default: the `listen` address of the
    /// daemon's configuration file (see --config), else 127.0.0.1:7455.
    /// Without a daemon, the command takes a snapshot of its own.
    #[arg(long, value_name = "ADDR")]
    pub daemon: Option<SocketAddr>,
    /// The daemon's configuration file, to find it at its `listen` address
    /// (and, without a daemon, use its `registry`). Default:
    /// /etc/portmon/portmon.toml if it exists.
    #[arg(long, value_name = "PATH", env = "PORTMON_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Where the daemon is, and the registry a snapshot taken without it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonChoice {
    pub address: SocketAddr,
    /// `--registry`, else the configuration file's `registry`.
    pub registry: Option<PathBuf>,
}

impl DaemonArgs {
    /// Reads the configuration file (a file named by --config must be
    /// there and parse; the default one may be missing).
    pub fn choose(&self) -> Result<DaemonChoice, ConfigError> {
        let config = daemon_config(self.config.as_deref())?;
        Ok(DaemonChoice {
            address: self.daemon.unwrap_or_else(|| reachable(config.listen)),
            registry: self.registry.registry.clone().or(config.registry),
        })
    }
}

fn daemon_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    if path.is_some() {
        return Config::load(path);
    }
    Config::load(None).or_else(|err| {
        eprintln!("portmon: {err}; asking the daemon at its default address");
        Ok(Config::default())
    })
}

/// Where to reach a daemon listening on `listen`: a wildcard address is
/// reached through loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_through_loopback() {
        let cases = [
            ("0.0.0.0:7455", "127.0.0.1:7455"),
            ("[::]:9000", "[::1]:9000"),
            ("10.1.2.3:7455", "10.1.2.3:7455"),
        ];
        for (listen, want) in cases {
            assert_eq!(reachable(listen.parse().unwrap()), want.parse().unwrap());
        }
    }

    #[test]
    fn the_daemon_is_found_through_its_configuration_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portmon.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:7999\"\nregistry = \"/srv/services\"\n").unwrap();
        let args = DaemonArgs {
            config: Some(path.clone()),
            ..DaemonArgs::default()
        };
        assert_eq!(
            args.choose().unwrap(),
            DaemonChoice {
                address: "127.0.0.1:7999".parse().unwrap(),
                registry: Some("/srv/services".into()),
            }
        );
        let named = DaemonArgs {
            daemon: Some("10.0.0.1:1".parse().unwrap()),
            registry: RegistryArgs {
                registry: Some("/etc/services".into()),
            },
            ..args.clone()
        };
        assert_eq!(
            named.choose().unwrap(),
            DaemonChoice {
                address: "10.0.0.1:1".parse().unwrap(),
                registry: Some("/etc/services".into()),
            }
        );
        std::fs::write(&path, "lisen = 1\n").unwrap();
        assert!(matches!(args.choose(), Err(ConfigError::Parse { .. })));
        let missing = DaemonArgs {
            config: Some(dir.path().join("missing.toml")),
            ..DaemonArgs::default()
        };
        assert!(matches!(missing.choose(), Err(ConfigError::Read { .. })));
    }
}
