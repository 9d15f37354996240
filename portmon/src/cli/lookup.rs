//! `portmon lookup`: what a port, a range of ports or a service name means.
//!
//! For each (port, protocol): the IANA range class, every registry record
//! on it, and whether this network namespace's kernel hands the port out
//! as an ephemeral port or keeps it reserved.
//!
//! Exit codes: 0 when something was found; 64 (`EXIT_USAGE`) for a query
//! that is not a port, a range or a name (the one-line reason goes to
//! stderr); 1 (an error returned to `cli::run`) when the registry cannot be
//! loaded or a name is not in it. An unreadable `/proc/sys/net/ipv4` only
//! warns: the registry's answer stands without the host's view.

use std::{
    collections::BTreeSet,
    io::{self, Write as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{RegistryArgs, EXIT_USAGE};
use crate::{
    exhaustion::{EphemeralPool, PoolSysctls},
    port_class::PortClass,
    registry::{Assignment, Details, PortRange, Registry, ServiceEntry, Source, Transport},
};

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// A port (5432), a range (6000-6010) or a service name (postgresql).
    pub query: String,
    /// Only this transport protocol (default: every protocol the registry
    /// lists on the port, else tcp and udp).
    #[arg(long, value_enum, value_name = "PROTO")]
    pub proto: Option<ProtoArg>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `--proto` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Sctp,
    Dccp,
}

impl From<ProtoArg> for Transport {
    fn from(arg: ProtoArg) -> Self {
        match arg {
            ProtoArg::Tcp => Transport::Tcp,
            ProtoArg::Udp => Transport::Udp,
            ProtoArg::Sctp => Transport::Sctp,
            ProtoArg::Dccp => Transport::Dccp,
        }
    }
}

/// What the user asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Query {
    Ports(PortRange),
    Name(String),
}

/// A query that is not a port, a range or a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum QueryError {
    #[error("empty query: give a port (5432), a range (6000-6010) or a service name (postgresql)")]
    Empty,
    #[error("port {text} is out of range: ports are 0-65535")]
    OutOfRange { text: String },
    #[error("range {low}-{high} is reversed: write {high}-{low}")]
    Reversed { low: u16, high: u16 },
    #[error("{text:?} is not a port or a range: write 5432 or 6000-6010")]
    BadRange { text: String },
}

fn parse_query(text: &str) -> Result<Query, QueryError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(QueryError::Empty);
    }
    // Service names contain a letter (RFC 6335 section 5.1), so digits and
    // dashes alone are meant as ports.
    if !text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Ok(Query::Name(text.to_owned()));
    }
    let port = |t: &str| {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QueryError::BadRange {
                text: text.to_owned(),
            });
        }
        t.parse::<u16>()
            .map_err(|_| QueryError::OutOfRange { text: t.to_owned() })
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (port(low)?, port(high)?),
        None => (port(text)?, port(text)?),
    };
    if low > high {
        return Err(QueryError::Reversed { low, high });
    }
    Ok(Query::Ports(PortRange { low, high }))
}

/// One (port, protocol) of the answer.
#[derive(Debug, Serialize)]
struct PortRow<'r> {
    port: u16,
    proto: Transport,
    class: PortClass,
    /// IANA's word on the port.
    assignment: Assignment,
    services: Vec<ServiceJson<'r>>,
    /// `None` when the host's ephemeral range could not be read.
    ephemeral: Option<bool>,
    reserved: Option<bool>,
}

#[derive(Debug, Serialize)]
struct ServiceJson<'r> {
    name: Option<&'r str>,
    /// Only set for names without a port (the port rows carry their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<Transport>,
    description: &'r str,
    aliases: Vec<&'r str>,
    /// IANA's remaining columns; left out where all are empty (always, for
    /// `/etc/services`).
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'r>>,
}

impl<'r> From<ServiceEntry<'r>> for ServiceJson<'r> {
    fn from(entry: ServiceEntry<'r>) -> Self {
        let details = entry.details();
        ServiceJson {
            name: entry.name,
            proto: None,
            description: entry.description,
            aliases: entry.aliases().collect(),
            details: (details != Details::default()).then_some(details),
        }
    }
}

#[derive(Debug, Serialize)]
struct EphemeralJson {
    low: u16,
    high: u16,
    /// `ip_local_reserved_ports` in the kernel's format.
    reserved: String,
    /// Ports the kernel can hand out.
    size: u32,
}

#[derive(Debug, Serialize)]
struct Answer<'r> {
    query: &'r str,
    registry: &'r Source,
    ephemeral_range: Option<EphemeralJson>,
    ports: Vec<PortRow<'r>>,
    /// Names registered without a port.
    portless: Vec<ServiceJson<'r>>,
}

pub fn run(args: LookupArgs) -> anyhow::Result<ExitCode> {
    let query = match parse_query(&args.query) {
        Ok(query) => query,
        Err(err) => {
            eprintln!("portmon: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let registry = Registry::load(args.registry.registry.as_deref())
        .context("cannot load the port registry (pass --registry PATH to use another file)")?;
    let pool = match PoolSysctls::open().and_then(|sysctls| sysctls.read()) {
        Ok(settings) => Some(settings.pool),
        Err(err) => {
            eprintln!("portmon: warning: {:#}", anyhow::Error::from(err));
            None
        }
    };
    let answer = answer(
        &args.query,
        &query,
        args.proto.map(Transport::from),
        &registry,
        pool.as_ref(),
    )?;
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&answer).context("cannot encode the answer as JSON")?;
        json.push('\n');
        json
    } else {
        table(&answer)
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout. A reader that closed the pipe early
/// (`portmon lookup 0-65535 | head`) ends the output quietly, where
/// `print!` would panic.
pub(super) fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

fn answer<'r>(
    text: &'r str,
    query: &Query,
    proto: Option<Transport>,
    registry: &'r Registry,
    pool: Option<&EphemeralPool>,
) -> anyhow::Result<Answer<'r>> {
    let wanted = |t: Transport| proto.is_none_or(|p| p == t);
    let mut slots = BTreeSet::new();
    let mut portless = Vec::new();
    match query {
        Query::Ports(range) => {
            for port in range.ports() {
                let listed: Vec<Transport> = match proto {
                    Some(p) => vec![p],
                    None => Transport::ALL
                        .into_iter()
                        .filter(|&t| registry.by_port(port, t).len() > 0)
                        .collect(),
                };
                let transports = if listed.is_empty() {
                    vec![Transport::Tcp, Transport::Udp]
                } else {
                    listed
                };
                slots.extend(transports.into_iter().map(|t| (port, t)));
            }
        }
        Query::Name(name) => {
            for entry in registry.by_name(name) {
                // IANA's records without a transport are TCP+UDP assignments.
                let transports = match entry.transport {
                    Some(t) => vec![t],
                    None => vec![Transport::Tcp, Transport::Udp],
                };
                let transports = transports.into_iter().filter(|&t| wanted(t));
                match entry.ports {
                    Some(range) => slots.extend(transports.flat_map(|t| range.ports().map(move |p| (p, t)))),
                    None if entry.transport.is_none_or(wanted) => {
                        portless.push(ServiceJson {
                            proto: entry.transport,
                            ..ServiceJson::from(entry)
                        });
                    }
                    None => {}
                }
            }
            if slots.is_empty() && portless.is_empty() {
                let source = registry.source();
                let only = proto.map(|p| format!(" over {p}")).unwrap_or_default();
                anyhow::bail!(
                    "no service named {name:?}{only} in {} ({} format, {} entries)",
                    source.path.display(),
                    source.format,
                    source.entries
                );
            }
        }
    }
    let ports = slots
        .into_iter()
        .map(|(port, proto)| PortRow {
            port,
            proto,
            class: PortClass::of(port),
            assignment: registry.assignment(port, proto),
            services: registry.by_port(port, proto).map(ServiceJson::from).collect(),
            ephemeral: pool.map(|p| p.contains(port)),
            reserved: pool.map(|p| p.is_reserved(port)),
        })
        .collect();
    let ephemeral_range = pool.map(|p| EphemeralJson {
        low: p.range.low,
        high: p.range.high,
        reserved: p.reserved.to_string(),
        size: p.size(),
    });
    Ok(Answer {
        query: text,
        registry: registry.source(),
        ephemeral_range,
        ports,
        portless,
    })
}

/// The human form: aligned columns, one line per record, then the host's
/// range and the registry's source.
fn table(answer: &Answer<'_>) -> String {
    const HEADER: [&str; 7] = [
        "PORT",
        "PROTO",
        "CLASS",
        "IANA",
        "EPHEMERAL",
        "SERVICE",
        "DESCRIPTION",
    ];
    // Each line, and the details printed under it (IANA's other columns).
    let mut lines: Vec<([String; 7], Vec<String>)> = vec![(HEADER.map(String::from), Vec::new())];
    for row in &answer.ports {
        let ephemeral = match (row.ephemeral, row.reserved) {
            (Some(true), _) => "yes",
            (Some(false), Some(true)) => "no (reserved)",
            (Some(false), _) => "no",
            (None, _) => "?",
        };
        let line = |service: String, description: String| {
            let (port, proto, class) = (row.port.to_string(), row.proto.to_string(), row.class.to_string());
            let assignment = row.assignment.to_string();
            [
                port,
                proto,
                class,
                assignment,
                ephemeral.to_owned(),
                service,
                description,
            ]
        };
        if row.services.is_empty() {
            lines.push((line("-".into(), "(not in the registry)".into()), Vec::new()));
        }
        for service in &row.services {
            let details = service.details.as_ref().map(detail_lines).unwrap_or_default();
            lines.push((
                line(service_label(service), one_line(service.description)),
                details,
            ));
        }
    }
    let mut widths = [0; 7];
    for (line, _) in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Details start under the SERVICE column.
    let indent = " ".repeat(widths[..5].iter().map(|w| w + 2).sum());
    let mut out = String::new();
    if !answer.ports.is_empty() {
        for (line, details) in &lines {
            let cells: Vec<String> = line
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            for detail in details {
                out.push_str(&indent);
                out.push_str(detail);
                out.push('\n');
            }
        }
    }
    for service in &answer.portless {
        let proto = service.proto.map(|p| format!("/{p}")).unwrap_or_default();
        out.push_str(&format!(
            "{}{proto}: registered without a port: {}\n",
            service_label(service),
            one_line(service.description)
        ));
    }
    match &answer.ephemeral_range {
        Some(range) => {
            let reserved = if range.reserved.is_empty() {
                "none"
            } else {
                &range.reserved
            };
            out.push_str(&format!(
                "ephemeral ports (this network namespace): {}-{}, reserved: {reserved}, {} usable\n",
                range.low, range.high, range.size
            ));
        }
        None => out.push_str("ephemeral ports: unknown (cannot read /proc/sys/net/ipv4)\n"),
    }
    let source = answer.registry;
    out.push_str(&format!(
        "registry: {} ({} format, {} entries)\n",
        source.path.display(),
        source.format,
        source.entries
    ));
    out
}

fn service_label(service: &ServiceJson<'_>) -> String {
    let name = service.name.unwrap_or("-");
    if service.aliases.is_empty() {
        name.to_owned()
    } else {
        format!("{name} ({})", service.aliases.join(", "))
    }
}

/// IANA's other columns of a record, as `key: value` lines: who and when
/// on one, each of reference and notes (de-assignments) on its own.
fn detail_lines(details: &Details<'_>) -> Vec<String> {
    let who_when: Vec<String> = [
        ("assignee", details.assignee),
        ("contact", details.contact),
        ("registered", details.registered),
        ("modified", details.modified),
        ("service code", details.service_code),
        ("unauthorized use reported", details.unauthorized_use),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(key, value)| format!("{key}: {}", one_line(value)))
    .collect();
    let mut lines = Vec::new();
    if !who_when.is_empty() {
        lines.push(who_when.join(", "));
    }
    for (key, value) in [("reference", details.reference), ("notes", details.notes)] {
        if !value.is_empty() {
            lines.push(format!("{key}: {}", one_line(value)));
        }
    }
    lines
}

/// IANA descriptions may span lines; a table cell may not.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exhaustion::{LocalPortRange, ReservedPorts};

    #[test]
    fn parse_query_table() {
        let ports = |low, high| Ok(Query::Ports(PortRange { low, high }));
        let cases = [
            ("5432", ports(5432, 5432)),
            (" 0 ", ports(0, 0)),
            ("65535", ports(65535, 65535)),
            ("6000-6010", ports(6000, 6010)),
            ("7-7", ports(7, 7)),
            ("postgresql", Ok(Query::Name("postgresql".into()))),
            ("3com-tsmux", Ok(Query::Name("3com-tsmux".into()))),
            ("", Err(QueryError::Empty)),
            ("  ", Err(QueryError::Empty)),
            ("70000", Err(QueryError::OutOfRange { text: "70000".into() })),
            (
                "99999999999999999999999",
                Err(QueryError::OutOfRange {
                    text: "99999999999999999999999".into(),
                }),
            ),
            ("1-70000", Err(QueryError::OutOfRange { text: "70000".into() })),
            ("10-5", Err(QueryError::Reversed { low: 10, high: 5 })),
            ("10-", Err(QueryError::BadRange { text: "10-".into() })),
            ("-", Err(QueryError::BadRange { text: "-".into() })),
            ("1-2-3", Err(QueryError::BadRange { text: "1-2-3".into() })),
        ];
        for (text, want) in cases {
            assert_eq!(parse_query(text), want, "{text:?}");
        }
        assert_eq!(
            QueryError::OutOfRange { text: "70000".into() }.to_string(),
            "port 70000 is out of range: ports are 0-65535"
        );
    }

    fn registry() -> Registry {
        let text = "\
ssh 22/tcp # SSH Remote Login Protocol
http 80/tcp www # WorldWideWeb HTTP
x11 6000/tcp x11-0
x11-1 6001/tcp
x11-1 6001/udp
postgresql 5432/tcp postgres # PostgreSQL
postgresql 5432/sctp
";
        Registry::parse(text, std::path::Path::new("/test/services")).unwrap()
    }

    fn pool() -> EphemeralPool {
        EphemeralPool {
            range: LocalPortRange::LINUX_DEFAULT,
            reserved: "40000".parse::<ReservedPorts>().unwrap(),
        }
    }

    fn rows(query: &str, proto: Option<Transport>) -> Vec<(u16, Transport, Vec<Option<String>>)> {
        let registry = registry();
        let pool = pool();
        let answer = answer(query, &parse_query(query).unwrap(), proto, &registry, Some(&pool)).unwrap();
        answer
            .ports
            .iter()
            .map(|r| {
                (
                    r.port,
                    r.proto,
                    r.services.iter().map(|s| s.name.map(String::from)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn answers_table() {
        use Transport::*;
        let named = |n: &str| vec![Some(n.to_owned())];
        let cases = [
            ("22", None, vec![(22, Tcp, named("ssh"))]),
            ("22", Some(Udp), vec![(22, Udp, vec![])]),
            ("7", None, vec![(7, Tcp, vec![]), (7, Udp, vec![])]),
            (
                "5432",
                None,
                vec![
                    (5432, Tcp, named("postgresql")),
                    (5432, Sctp, named("postgresql")),
                ],
            ),
            ("POSTGRES", Some(Tcp), vec![(5432, Tcp, named("postgresql"))]),
            (
                "6000-6001",
                None,
                vec![
                    (6000, Tcp, named("x11")),
                    (6001, Tcp, named("x11-1")),
                    (6001, Udp, named("x11-1")),
                ],
            ),
            (
                "6000-6001",
                Some(Udp),
                vec![(6000, Udp, vec![]), (6001, Udp, named("x11-1"))],
            ),
        ];
        for (query, proto, want) in cases {
            assert_eq!(rows(query, proto), want, "{query} {proto:?}");
        }
    }

    #[test]
    fn unknown_names_are_errors() {
        let registry = registry();
        for (name, proto) in [("nosuch", None), ("ssh", Some(Transport::Udp))] {
            let err = answer(name, &Query::Name(name.into()), proto, &registry, None).unwrap_err();
            assert!(err.to_string().contains("/test/services"), "{err}");
        }
    }

    #[test]
    fn table_is_aligned_and_json_is_stable() {
        let registry = registry();
        let pool = pool();
        let answer = answer("80", &parse_query("80").unwrap(), None, &registry, Some(&pool)).unwrap();
        let text = table(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "PORT  PROTO  CLASS   IANA      EPHEMERAL  SERVICE     DESCRIPTION"
        );
        assert_eq!(
            lines[1],
            "80    tcp    system  assigned  no         http (www)  WorldWideWeb HTTP"
        );
        assert!(
            lines[2].contains("32768-60999, reserved: 40000, 28231 usable"),
            "{text}"
        );

        let json: serde_json::Value = serde_json::to_value(&answer).unwrap();
        let want = serde_json::json!({
            "port": 80, "proto": "tcp", "class": "system", "assignment": "assigned",
            "ephemeral": false, "reserved": false,
            "services": [{"name": "http", "description": "WorldWideWeb HTTP", "aliases": ["www"]}],
        });
        assert_eq!(json["ports"][0], want);
        assert_eq!(json["registry"]["format"], "services");
        assert_eq!(json["ephemeral_range"]["size"], 28231);
    }
}
