//! `portmon ports`: the live inventory as a table like `ss`, with IANA class
//! and service. Asks the running daemon; without one, takes a snapshot itself.

use std::{collections::HashMap, io::Write as _, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use portmon_common::Proto;

use super::RegistryArgs;
use crate::{
    api::{port_entries, PortEntry, PortFilter},
    config::DEFAULT_LISTEN,
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
    /// Address of the daemon to ask.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub daemon: SocketAddr,
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
    let entries = match ask_daemon(args.daemon, &filter) {
        Some(entries) => entries?,
        None => snapshot_here(&args, &filter)?,
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
        query.push(format!("netns={netns}"));
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

fn snapshot_here(args: &PortsArgs, filter: &PortFilter) -> anyhow::Result<Vec<PortEntry>> {
    let registry = Registry::load(args.registry.registry.as_deref())?;
    // Other namespaces need privileges; without them, this one is what ss would show.
    let mut inventory = if is_root() {
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
        if let Ok(cookie) = crate::netns::current_cookie() {
            names.insert(cookie, "host".to_owned());
        }
    }
    Ok(port_entries(
        &snapshot.sockets,
        &registry,
        &HashMap::new(),
        &names,
        filter,
    ))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn print_table(out: &mut impl std::io::Write, entries: &[PortEntry]) -> std::io::Result<()> {
    let rows: Vec<[String; 8]> = entries
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
            ]
        })
        .collect();
    let header = [
        "NETNS", "PROTO", "STATE", "LOCAL", "REMOTE", "CLASS", "SERVICE", "PROCESS",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 8]| {
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
