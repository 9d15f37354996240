//! `portmon ports`: the live inventory as a table like `ss`, with IANA class
//! and service. Asks the running daemon; without one, takes a snapshot itself.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use portmon_common::Proto;

use super::{RegistryArgs, EXIT_USAGE};
use crate::{
    api::{port_entries, PortEntry, PortFilter},
    config::{Config, ConfigError},
    inventory::Inventory,
    registry::Registry,
};

#[derive(Debug, Args)]
pub struct PortsArgs {
    /// Listening sockets only (TCP LISTEN, UDP unconnected).
    #[arg(long)]
    pub listening: bool,
    /// Sockets on this local port only.
    #[arg(long)]
    pub port: Option<u16>,
    /// One protocol only.
    #[arg(long, value_parser = ["tcp", "udp"])]
    pub proto: Option<String>,
    /// One network namespace only (`host`, a /run/netns name, or `net:[INODE]`).
    #[arg(long)]
    pub netns: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Address of the daemon to ask. Default: the `listen` address of the
    /// daemon's configuration file (see --config), else 127.0.0.1:7455.
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

pub fn run(args: PortsArgs) -> anyhow::Result<ExitCode> {
    let filter = PortFilter {
        listening: args.listening,
        port: args.port,
        proto: args
            .proto
            .as_deref()
            .map(|p| if p == "udp" { Proto::Udp } else { Proto::Tcp }),
        netns: args.netns.clone(),
    };
    let config = match daemon_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(err @ ConfigError::Parse { .. }) => {
            eprintln!("portmon: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(err) => return Err(err.into()),
    };
    let daemon = args.daemon.unwrap_or_else(|| reachable(config.listen));
    let entries = match ask_daemon(daemon, &filter) {
        Some(entries) => entries?,
        None => {
            let registry = args.registry.registry.as_deref().or(config.registry.as_deref());
            snapshot_here(registry, &filter)?
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        print_table(&mut out, &entries)
    };
    match written {
        // A reader that went away (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing the table"),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// The daemon's configuration: the file given, which must be there and be
/// valid; else the default file if it is readable and valid, else the defaults.
fn daemon_config(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
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

/// The daemon's answer; `None` when no daemon listens there.
fn ask_daemon(addr: SocketAddr, filter: &PortFilter) -> Option<anyhow::Result<Vec<PortEntry>>> {
    let mut query = Vec::new();
    if filter.listening {
        query.push("listening=1".to_owned());
    }
    if let Some(port) = filter.port {
        query.push(format!("port={port}"));
    }
    if let Some(proto) = filter.proto {
        query.push(format!("proto={proto}"));
    }
    if let Some(netns) = &filter.netns {
        query.push(format!(
            "netns={}",
            form_urlencoded::byte_serialize(netns.as_bytes()).collect::<String>()
        ));
    }
    let path = format!("/api/v1/ports?{}", query.join("&"));
    let (status, body) = crate::http::get(addr, &path, Duration::from_secs(10)).ok()?;
    Some(if status == 200 {
        serde_json::from_str(&body)
            .with_context(|| format!("the daemon at {addr} answered something else than ports"))
    } else {
        Err(anyhow::anyhow!(
            "the daemon at {addr} answered {status}: {}",
            body.trim()
        ))
    })
}

fn snapshot_here(registry: Option<&std::path::Path>, filter: &PortFilter) -> anyhow::Result<Vec<PortEntry>> {
    let registry = Registry::load(registry)?;
    // Other namespaces need privileges; without them, this one is what ss would show.
    let mut inventory = if crate::kernel::capabilities::is_root() {
        Inventory::scan()
    } else {
        Inventory::current()?
    };
    let snapshot = inventory.snapshot();
    let mut names: HashMap<u64, String> = inventory
        .namespaces()
        .iter()
        .map(|n| (n.cookie, n.name.clone()))
        .collect();
    if names.is_empty() {
        if let Ok(cookie) = crate::kernel::netns::current_cookie() {
            names.insert(cookie, "host".to_owned());
        }
    }
    Ok(port_entries(
        &snapshot.sockets,
        &registry,
        &HashMap::new(),
        &HashMap::new(),
        &names,
        filter,
    ))
}

fn print_table(out: &mut impl std::io::Write, entries: &[PortEntry]) -> std::io::Result<()> {
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.netns.clone(),
                e.proto.clone(),
                e.state.clone(),
                e.local.clone(),
                e.remote.clone(),
                e.class.clone(),
                e.service.clone(),
                e.owner
                    .as_ref()
                    .map(|o| format!("{}({})", o.comm, o.pid))
                    .unwrap_or_default(),
                e.owner.as_ref().and_then(|o| o.unit.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "NETNS", "PROTO", "STATE", "LOCAL", "REMOTE", "CLASS", "SERVICE", "PROCESS", "UNIT",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 9]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OwnerEntry;

    fn entry(port: u16, owner: Option<OwnerEntry>) -> PortEntry {
        PortEntry {
            netns: "host".into(),
            proto: "tcp".into(),
            family: "ipv4".into(),
            state: "listen".into(),
            local: format!("127.0.0.1:{port}"),
            remote: "0.0.0.0:0".into(),
            port,
            class: "system".into(),
            service: "http".into(),
            uid: 0,
            cookie: 1,
            owner,
        }
    }

    #[test]
    fn the_table_names_the_owners_unit() {
        let nginx = OwnerEntry {
            pid: 42,
            comm: "nginx".into(),
            cgroup: 7,
            unit: Some("nginx.service".into()),
        };
        let mut out = Vec::new();
        print_table(&mut out, &[entry(80, Some(nginx)), entry(81, None)]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0].last(), Some(&"UNIT"), "{text}");
        assert_eq!(lines[1][7..], ["nginx(42)", "nginx.service"], "{text}");
        assert_eq!(lines[2].len(), 7, "no owner, no unit: {text}");
    }

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
        std::fs::write(&path, "listen = \"0.0.0.0:7999\"\n").unwrap();
        let config = daemon_config(Some(&path)).unwrap();
        assert_eq!(reachable(config.listen), "127.0.0.1:7999".parse().unwrap());
        std::fs::write(&path, "lisen = 1\n").unwrap();
        assert!(matches!(
            daemon_config(Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            daemon_config(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn json_owners_from_an_older_daemon_have_no_unit() {
        let old = r#"{"pid":1,"comm":"sshd","cgroup":5}"#;
        let owner: OwnerEntry = serde_json::from_str(old).unwrap();
        assert_eq!(owner.unit, None);
        let keys: Vec<String> = match serde_json::to_value(&owner).unwrap() {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("{other}"),
        };
        assert_eq!(
            keys,
            ["cgroup", "comm", "pid", "unit"],
            "unit is there even when null"
        );
    }
}
