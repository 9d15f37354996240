//! `portmon doctor`: what is wrong with this host's ports, most urgent
//! first, each finding with its evidence and the exact fix. It reads the
//! daemon (pools, sockets with owners, failures, portmon's own health) or,
//! without one, takes a snapshot of its own (pools and sockets only).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

mod findings;

pub use findings::diagnose;

use super::{
    daemon_args::{DaemonArgs, DaemonChoice},
    EXIT_USAGE,
};
use crate::{
    api::{PortEntry, PortFilter, PortListing},
    config::ConfigError,
    exhaustion::{self, DEFAULT_TOP_DESTINATIONS},
    registry::Registry,
};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One network namespace only (`host`, a /run/netns name, or `net:[INODE]`).
    #[arg(long)]
    pub netns: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// How urgent a finding is; the exit status is the most urgent one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing, not urgent (exit status 0).
    Notice,
    /// Will bite (exit status 1).
    Warning,
    /// Biting now or about to (exit status 2).
    Critical,
}

impl Severity {
    fn exit_code(self) -> u8 {
        match self {
            Severity::Notice => 0,
            Severity::Warning => 1,
            Severity::Critical => 2,
        }
    }
}

/// One thing wrong, why portmon says so, and what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable name for scripts (`pool_high`, `listener_in_ephemeral_range`, …).
    pub kind: &'static str,
    pub netns: String,
    pub summary: String,
    pub evidence: Vec<String>,
    pub remediation: Vec<String>,
}

/// What doctor read, from the daemon or a snapshot.
#[derive(Debug, Default)]
pub struct Evidence {
    /// `/api/v1/ephemeral`, namespaces by name.
    pub ephemeral: Value,
    pub sockets: Vec<PortEntry<'static>>,
    /// `/api/v1/failures`; empty from a snapshot.
    pub failures: Vec<Value>,
    /// The few metrics doctor reads, `(name, labels) → value`; empty from a snapshot.
    pub metrics: Vec<(String, BTreeMap<String, String>, f64)>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    source: String,
    status: u8,
    findings: &'a [Finding],
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
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
    let (source, evidence) = match from_daemon(daemon) {
        Some(evidence) => (format!("daemon at {daemon}"), evidence?),
        None => {
            let source = format!(
                "own snapshot (no daemon at {daemon}: failures, bind-before-connect and portmon's health unknown)"
            );
            (source, snapshot(registry.as_deref())?)
        }
    };
    let findings = diagnose(&evidence, args.netns.as_deref());
    let status = findings.iter().map(|f| f.severity.exit_code()).max().unwrap_or(0);
    let text = if args.json {
        let report = Report {
            source,
            status,
            findings: &findings,
        };
        let mut json = serde_json::to_string_pretty(&report).context("cannot encode the findings as JSON")?;
        json.push('\n');
        json
    } else {
        text(&source, &findings)
    };
    super::lookup::write_stdout(&text)?;
    Ok(ExitCode::from(status))
}

fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    crate::http::get(addr, path, Duration::from_secs(10))
}

/// What the daemon knows; `None` when no daemon listens at `addr`.
fn from_daemon(addr: SocketAddr) -> Option<anyhow::Result<Evidence>> {
    let (status, ephemeral) = get(addr, "/api/v1/ephemeral").ok()?;
    Some((|| {
        let ok = |path: &str| -> anyhow::Result<String> {
            let (status, body) =
                get(addr, path).with_context(|| format!("asking the daemon at {addr} for {path}"))?;
            anyhow::ensure!(
                status == 200,
                "the daemon at {addr} answered {status} to {path}: {}",
                body.trim()
            );
            Ok(body)
        };
        anyhow::ensure!(
            status == 200,
            "the daemon at {addr} answered {status} to /api/v1/ephemeral"
        );
        let json = |path: &str, body: &str| {
            serde_json::from_str::<Value>(body).with_context(|| {
                format!("the daemon at {addr} answered {path} with something else than JSON")
            })
        };
        let sockets = serde_json::from_str(&ok("/api/v1/ports")?)
            .with_context(|| format!("the daemon at {addr} answered something else than ports"))?;
        let failures = json("/api/v1/failures", &ok("/api/v1/failures?limit=1000")?)?;
        Ok(Evidence {
            ephemeral: json("/api/v1/ephemeral", &ephemeral)?,
            sockets,
            failures: failures.as_array().cloned().unwrap_or_default(),
            metrics: metrics(&ok("/metrics")?),
        })
    })())
}

/// The families doctor reads from an exposition.
pub(super) fn metrics(exposition: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    const WANTED: [&str; 4] = [
        "portmon_bind_before_connect_total",
        "portmon_events_dropped_total",
        "portmon_map_entries",
        "portmon_map_capacity",
    ];
    exposition
        .lines()
        .filter(|l| WANTED.iter().any(|w| l.starts_with(w)))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            // Label values here are commands and map names: no `",` inside.
            let labels = labels
                .split("\",")
                .filter_map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some((name.to_owned(), labels, value))
        })
        .collect()
}

/// Sockets and pools read here, as the daemon would report them (without
/// owners: only the daemon's kernel programs know those).
fn snapshot(registry: Option<&std::path::Path>) -> anyhow::Result<Evidence> {
    let registry = Registry::load(registry)?;
    let (snapshot, names) = super::ports::snapshot_without_daemon()?;
    let report = exhaustion::assess(
        &snapshot.sockets,
        &snapshot.pools,
        &std::collections::HashSet::<u64>::new(),
        DEFAULT_TOP_DESTINATIONS,
    );
    let mut ephemeral = serde_json::to_value(&report).context("cannot encode the pools")?;
    name_namespaces(&mut ephemeral, &names);
    let (owners, units) = (HashMap::new(), HashMap::new());
    let listing = PortListing::new(
        &snapshot.sockets,
        &registry,
        &owners,
        &units,
        &names,
        &PortFilter::default(),
    );
    let sockets = listing.entries().map(PortEntry::into_owned).collect();
    Ok(Evidence {
        ephemeral,
        sockets,
        ..Evidence::default()
    })
}

/// Adds `netns_name` beside every `netns` cookie, as the daemon's API does.
fn name_namespaces(report: &mut Value, names: &HashMap<u64, String>) {
    let Some(report) = report.as_object_mut() else {
        return;
    };
    for list in report.values_mut().filter_map(Value::as_array_mut) {
        for record in list.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(cookie) = record.get("netns").and_then(Value::as_u64) {
                let name = crate::namespaces::display_name(names, cookie);
                record.insert("netns_name".into(), Value::from(name));
            }
        }
    }
}

fn text(source: &str, findings: &[Finding]) -> String {
    let mut out = format!("portmon doctor: {source}\n");
    if findings.iter().all(|f| f.severity == Severity::Notice) {
        out.push_str("nothing urgent\n");
    }
    for f in findings {
        let severity = match f.severity {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
            Severity::Notice => "notice",
        };
        out.push_str(&format!("\n{severity}: {}\n", f.summary));
        for line in &f.evidence {
            out.push_str(&format!("  evidence: {line}\n"));
        }
        for line in &f.remediation {
            out.push_str(&format!("  fix: {line}\n"));
        }
    }
    out
}
