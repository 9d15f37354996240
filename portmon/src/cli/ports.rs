//! `portmon ports`: the live inventory as a table like `ss`, with IANA class
//! and service. Asks the running daemon; without one, takes a snapshot itself.

use std::{collections::HashMap, io::Write as _, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use portmon_common::Proto;

use super::{
    daemon_args::{DaemonArgs, DaemonChoice},
    EXIT_USAGE,
};
use crate::{
    api::{PortEntry, PortFilter, PortListing},
    cgroups::CgroupPaths,
    config::ConfigError,
    inventory::{Inventory, Snapshot},
    kernel::mounts::Mounts,
    owners::owners_here,
    registry::Registry,
};

/// `ss`'s habits carry over: `-l -t -u -p -n -H` mean what they mean there
/// and combine (`portmon ports -tlnp`).
#[derive(Debug, Args)]
pub struct PortsArgs {
    /// Listening sockets only (TCP LISTEN, UDP unconnected).
    #[arg(short = 'l', long)]
    pub listening: bool,
    /// TCP sockets (with -u: both; neither: both).
    #[arg(short = 't', long, conflicts_with = "proto")]
    pub tcp: bool,
    /// UDP sockets (with -t: both; neither: both).
    #[arg(short = 'u', long, conflicts_with = "proto")]
    pub udp: bool,
    /// Show the process and systemd unit that own each socket (PROCESS and
    /// UNIT columns).
    #[arg(short = 'p', long)]
    pub processes: bool,
    /// Numbers only: no SERVICE column of registry names.
    #[arg(short = 'n', long)]
    pub numeric: bool,
    /// No header line.
    #[arg(short = 'H', long)]
    pub no_header: bool,
    /// Sockets on this local port only.
    #[arg(long)]
    pub port: Option<u16>,
    /// One protocol only.
    #[arg(long, value_parser = ["tcp", "udp"])]
    pub proto: Option<String>,
    /// One network namespace only (`host`, a /run/netns name, or `net:[INODE]`).
    #[arg(long)]
    pub netns: Option<String>,
    /// Sockets owned by this systemd unit only (`nginx.service`, or `nginx`
    /// for `nginx.service`).
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// Sockets owned by this process only.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// JSON instead of a table (every entry with every key, whatever -p -n).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

impl PortsArgs {
    /// The one protocol asked for, by `--proto`, `-t` or `-u`.
    fn proto(&self) -> Option<Proto> {
        match (self.proto.as_deref(), self.tcp, self.udp) {
            (Some("udp"), _, _) | (None, false, true) => Some(Proto::Udp),
            (Some(_), _, _) | (None, true, false) => Some(Proto::Tcp),
            (None, _, _) => None,
        }
    }

    /// Whether an entry passes `--unit` and `--pid`, which only the
    /// client applies: the API filters by what sockets are, not by owner.
    fn owned_as_asked(&self, entry: &PortEntry) -> bool {
        let owner = entry.owner.as_ref();
        let pid = self.pid.is_none_or(|pid| owner.is_some_and(|o| o.pid == pid));
        let unit = self.unit.as_deref().is_none_or(|want| {
            owner
                .and_then(|o| o.unit.as_deref())
                .is_some_and(|unit| unit == want || unit.strip_suffix(".service") == Some(want))
        });
        pid && unit
    }
}

pub fn run(args: PortsArgs) -> anyhow::Result<ExitCode> {
    let filter = PortFilter {
        listening: args.listening,
        port: args.port,
        proto: args.proto(),
        netns: args.netns.clone(),
    };
    let DaemonChoice {
        address: daemon,
        registry,
    } = match args.daemon.choose() {
        Ok(choice) => choice,
        Err(err @ ConfigError::Parse { .. }) => {
            eprintln!("portmon: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(err) => return Err(err.into()),
    };
    let mut entries = match ask_daemon(daemon, &filter) {
        Some(entries) => entries?,
        None => snapshot_here(registry.as_deref(), &filter)?,
    };
    entries.retain(|e| args.owned_as_asked(e));
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        let columns = Columns {
            processes: args.processes,
            services: !args.numeric,
            header: !args.no_header,
        };
        print_table(&mut out, &entries, columns)
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
/// The daemon's answer; `None` when no daemon listens there.
fn ask_daemon(addr: SocketAddr, filter: &PortFilter) -> Option<anyhow::Result<Vec<PortEntry<'static>>>> {
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

/// A snapshot taken here, without a daemon, and the names of its
/// namespaces by cookie. Other namespaces need privileges; without them,
/// this one is what `ss` would show.
pub(super) fn snapshot_without_daemon() -> anyhow::Result<(Snapshot, HashMap<u64, String>)> {
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
    Ok((snapshot, names))
}

/// Without a daemon the owners are the processes found holding each
/// socket: all of them as root, the user's own otherwise (as with `ss -p`).
fn snapshot_here(
    registry: Option<&std::path::Path>,
    filter: &PortFilter,
) -> anyhow::Result<Vec<PortEntry<'static>>> {
    let registry = Registry::load(registry)?;
    let (snapshot, names) = snapshot_without_daemon()?;
    let cgroup_root = Mounts::read()
        .ok()
        .and_then(|m| m.cgroup2().map(|c| c.mount_point.clone()))
        .unwrap_or_else(|| std::path::PathBuf::from("/sys/fs/cgroup"));
    let owners = owners_here(&snapshot.sockets, &cgroup_root);
    let mut cgroups = CgroupPaths::new(cgroup_root);
    let units = owners
        .values()
        .filter_map(|o| Some((o.cgroup, cgroups.unit(o.cgroup)?)))
        .collect();
    let listing = PortListing::new(&snapshot.sockets, &registry, &owners, &units, &names, filter);
    Ok(listing.entries().map(PortEntry::into_owned).collect())
}

/// Which optional parts of the table to print.
#[derive(Debug, Clone, Copy)]
struct Columns {
    /// PROCESS and UNIT (`-p`).
    processes: bool,
    /// SERVICE (left out with `-n`).
    services: bool,
    /// The header line (left out with `-H`).
    header: bool,
}

fn print_table(
    out: &mut impl std::io::Write,
    entries: &[PortEntry],
    columns: Columns,
) -> std::io::Result<()> {
    let mut header = vec!["NETNS", "PROTO", "STATE", "LOCAL", "REMOTE", "CLASS"];
    if columns.services {
        header.push("SERVICE");
    }
    if columns.processes {
        header.extend(["PROCESS", "UNIT"]);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                e.netns.to_string(),
                e.proto.to_string(),
                e.state.to_string(),
                e.local.to_string(),
                e.remote.to_string(),
                e.class.to_string(),
            ];
            if columns.services {
                row.push(e.service.to_string());
            }
            if columns.processes {
                let owner = e.owner.as_ref();
                row.push(
                    owner
                        .map(|o| format!("{}({})", o.comm, o.pid))
                        .unwrap_or_default(),
                );
                row.push(
                    owner
                        .and_then(|o| o.unit.as_deref())
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            row
        })
        .collect();
    super::table::write(out, &header, &rows, columns.header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OwnerEntry;

    fn nginx() -> OwnerEntry<'static> {
        OwnerEntry {
            pid: 42,
            comm: "nginx".into(),
            cgroup: 7,
            unit: Some("nginx.service".into()),
        }
    }

    fn entry(port: u16, owner: Option<OwnerEntry<'static>>) -> PortEntry<'static> {
        PortEntry {
            netns: "host".into(),
            proto: "tcp".into(),
            family: "ipv4".into(),
            state: "listen".into(),
            local: format!("127.0.0.1:{port}").into(),
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
        let nginx = nginx();
        let entries = [entry(80, Some(nginx)), entry(81, None)];
        let text = |columns| {
            let mut out = Vec::new();
            print_table(&mut out, &entries, columns).unwrap();
            String::from_utf8(out).unwrap()
        };
        let words = |text: &str| -> Vec<Vec<String>> {
            text.lines()
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect()
        };
        let all = Columns {
            processes: true,
            services: true,
            header: true,
        };
        let lines = words(&text(all));
        assert_eq!(lines[0].last().map(String::as_str), Some("UNIT"), "{lines:?}");
        assert_eq!(lines[1][7..], ["nginx(42)", "nginx.service"], "{lines:?}");
        assert_eq!(lines[2].len(), 7, "no owner, no unit: {lines:?}");

        // ss's defaults: no processes without -p; -n drops the names, -H the header.
        let plain = words(&text(Columns {
            processes: false,
            ..all
        }));
        assert_eq!(plain[0].last().map(String::as_str), Some("SERVICE"), "{plain:?}");
        assert_eq!(plain[1].len(), 7, "{plain:?}");
        let numeric = words(&text(Columns {
            services: false,
            header: false,
            ..all
        }));
        assert_eq!(numeric.len(), 2, "no header: {numeric:?}");
        assert_eq!(
            numeric[0][5..],
            ["system", "nginx(42)", "nginx.service"],
            "{numeric:?}"
        );
    }

    #[test]
    fn short_flags_combine_as_in_ss() {
        use clap::Parser as _;
        let ports = |args: &[&str]| -> PortsArgs {
            let cli = crate::cli::Cli::try_parse_from([&["portmon", "ports"], args].concat())
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.command {
                crate::cli::Command::Ports(ports) => ports,
                other => panic!("{other:?}"),
            }
        };
        let a = ports(&["-tlnp"]);
        assert!(a.tcp && a.listening && a.numeric && a.processes && !a.udp && !a.no_header);
        assert_eq!(a.proto(), Some(Proto::Tcp));
        let b = ports(&["-ulH"]);
        assert!(b.udp && b.listening && b.no_header);
        assert_eq!(b.proto(), Some(Proto::Udp));
        assert_eq!(ports(&["-tu"]).proto(), None, "both is all");
        assert_eq!(ports(&[]).proto(), None);
        assert_eq!(ports(&["--proto", "udp"]).proto(), Some(Proto::Udp));
        assert!(
            crate::cli::Cli::try_parse_from(["portmon", "ports", "-t", "--proto", "udp"]).is_err(),
            "-t and --proto say the same thing twice"
        );
    }

    #[test]
    fn unit_and_pid_keep_the_sockets_of_that_owner() {
        use clap::Parser as _;
        let nginx = nginx();
        let entries = [entry(80, Some(nginx)), entry(81, None)];
        let kept = |args: &[&str]| -> Vec<u16> {
            let cli = crate::cli::Cli::try_parse_from([&["portmon", "ports"], args].concat()).unwrap();
            let crate::cli::Command::Ports(ports) = cli.command else {
                panic!("not ports")
            };
            entries
                .iter()
                .filter(|e| ports.owned_as_asked(e))
                .map(|e| e.port)
                .collect()
        };
        assert_eq!(kept(&[]), [80, 81]);
        assert_eq!(kept(&["--unit", "nginx.service"]), [80]);
        assert_eq!(kept(&["--unit", "nginx"]), [80]);
        assert_eq!(kept(&["--unit", "ngin"]), [0u16; 0]);
        assert_eq!(kept(&["--pid", "42"]), [80]);
        assert_eq!(kept(&["--pid", "43"]), [0u16; 0]);
        assert_eq!(kept(&["--pid", "42", "--unit", "sshd"]), [0u16; 0]);
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
