//! The rules of `portmon doctor`: each reads the evidence and adds the
//! findings it sees, with the thresholds of the alert rules.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{Evidence, Finding, Severity};
use crate::api::PortEntry;

/// Ratios at which a pool or destination is a warning, and critical: the
/// alert rules' thresholds.
const WARNING_RATIO: f64 = 0.8;
const CRITICAL_RATIO: f64 = 0.95;
/// A destination whose TIME_WAIT sockets are most of its connections and
/// hold at least this share of what connect() has left.
const TIME_WAIT_RATIO: f64 = 0.5;
/// Maps this full are a warning.
const MAP_WARNING_RATIO: f64 = 0.9;
/// Processes named per destination.
const TOP_PROCESSES: usize = 3;

fn records<'v>(report: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    report[key].as_array().into_iter().flatten()
}

fn str_of<'v>(value: &'v Value, key: &str) -> &'v str {
    value[key].as_str().unwrap_or("")
}

/// Every finding, most urgent first; only `netns` when given.
pub fn diagnose(evidence: &Evidence, netns: Option<&str>) -> Vec<Finding> {
    let mut findings = Vec::new();
    pools(evidence, &mut findings);
    listeners(evidence, &mut findings);
    conflicts(evidence, &mut findings);
    health(evidence, &mut findings);
    if let Some(netns) = netns {
        findings.retain(|f| f.netns == netns || f.netns.is_empty());
    }
    // Stable within a severity: pools, listeners, conflicts, health.
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

fn pools(evidence: &Evidence, findings: &mut Vec<Finding>) {
    let report = &evidence.ephemeral;
    for pool in records(report, "pools") {
        let netns = str_of(pool, "netns_name");
        let proto = str_of(pool, "proto");
        let ratio = |key: &str| pool[key].as_f64().unwrap_or(0.0);
        let (op, worst) = if ratio("connect_ratio") >= ratio("bind_ratio") {
            ("connect", ratio("connect_ratio"))
        } else {
            ("bind", ratio("bind_ratio"))
        };
        if worst < WARNING_RATIO {
            continue;
        }
        let severity = if worst >= CRITICAL_RATIO {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut evidence_lines = vec![format!(
            "{proto} pool of {} ports: {} in use, {} held by bound sockets; {op}() at {:.0}%",
            pool["pool"],
            pool["in_use"],
            pool["bound"],
            worst * 100.0
        )];
        let mut remediation = Vec::new();
        let busiest = records(report, "destinations")
            .filter(|d| str_of(d, "netns_name") == netns && str_of(d, "proto") == proto)
            .max_by(|a, b| {
                a["ratio"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .total_cmp(&b["ratio"].as_f64().unwrap_or(0.0))
            });
        if let Some(dest) = busiest.filter(|_| op == "connect") {
            let remote = str_of(dest, "remote");
            evidence_lines.push(format!(
                "busiest destination {remote}: {} connections ({:.0}% of what connect() has left)",
                dest["connections"],
                dest["ratio"].as_f64().unwrap_or(0.0) * 100.0
            ));
            let holders = holders_to(&evidence.sockets, netns, remote);
            if !holders.is_empty() {
                evidence_lines.push(format!(
                    "processes holding the most ports to it: {}",
                    holders.join(", ")
                ));
            }
            remediation.push(format!(
                "reuse connections to {remote} (a connection pool, HTTP keep-alive) instead of one per request"
            ));
            remediation.push(format!(
                "or spread the load over more addresses or ports of {remote}'s service: each adds a whole pool"
            ));
        } else {
            remediation.push(
                "bind() sockets that only connect with IP_BIND_ADDRESS_NO_PORT set, so their ports are shared"
                    .to_owned(),
            );
        }
        remediation.push(format!(
            "widen the pool: sysctl -w net.ipv4.ip_local_port_range=\"10000 65535\" in netns {netns} (below it, check no listener: portmon ports -l --netns {netns})"
        ));
        findings.push(Finding {
            severity,
            kind: "pool_high",
            netns: netns.to_owned(),
            summary: format!(
                "{proto} ephemeral ports {:.0}% used for {op}() in netns {netns}",
                worst * 100.0
            ),
            evidence: evidence_lines,
            remediation,
        });
        time_wait(evidence, netns, proto, findings);
    }
}

/// `comm(pid) N` for the processes with the most sockets to `remote`.
fn holders_to(sockets: &[PortEntry], netns: &str, remote: &str) -> Vec<String> {
    let mut by_owner: BTreeMap<String, u32> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.netns == netns && s.remote == remote) {
        let owner = match &s.owner {
            Some(o) => format!("{}({})", o.comm, o.pid),
            None if s.state == "time_wait" => "closed (TIME_WAIT)".to_owned(),
            None => "unknown".to_owned(),
        };
        *by_owner.entry(owner).or_default() += 1;
    }
    let mut ranked: Vec<(String, u32)> = by_owner.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(TOP_PROCESSES)
        .map(|(owner, n)| format!("{owner} {n}"))
        .collect()
}

/// TIME_WAIT dominating a busy destination of a pool in trouble.
fn time_wait(evidence: &Evidence, netns: &str, proto: &str, findings: &mut Vec<Finding>) {
    for dest in records(&evidence.ephemeral, "destinations") {
        if str_of(dest, "netns_name") != netns || str_of(dest, "proto") != proto {
            continue;
        }
        if dest["ratio"].as_f64().unwrap_or(0.0) < TIME_WAIT_RATIO {
            continue;
        }
        let remote = str_of(dest, "remote");
        let to_it = evidence
            .sockets
            .iter()
            .filter(|s| s.netns == netns && s.remote == remote);
        let (all, waiting) = to_it.fold((0u32, 0u32), |(all, tw), s| {
            (all + 1, tw + u32::from(s.state == "time_wait"))
        });
        if all == 0 || waiting * 2 <= all {
            continue;
        }
        findings.push(Finding {
            severity: Severity::Warning,
            kind: "time_wait_dominates",
            netns: netns.to_owned(),
            summary: format!("TIME_WAIT holds most ports to {remote} in netns {netns}"),
            evidence: vec![format!(
                "{waiting} of {all} sockets to {remote} are in TIME_WAIT: connections closed by this side, each holding its port for 60 s"
            )],
            remediation: vec![
                format!("keep connections to {remote} open and reuse them"),
                format!("let connect() reuse TIME_WAIT ports (TCP timestamps on both ends): sysctl -w net.ipv4.tcp_tw_reuse=1 in netns {netns}"),
            ],
        });
    }
}

fn listeners(evidence: &Evidence, findings: &mut Vec<Finding>) {
    let report = &evidence.ephemeral;
    for fix in records(report, "reserved_ports_fixes") {
        let netns = str_of(fix, "netns_name");
        let listeners: Vec<String> = records(report, "listeners")
            .filter(|l| str_of(l, "netns_name") == netns)
            .map(|l| {
                let owner = match l["owner"].as_object() {
                    Some(o) => {
                        let unit = o
                            .get("unit")
                            .and_then(Value::as_str)
                            .map(|u| format!(", {u}"))
                            .unwrap_or_default();
                        format!(" ({}({}){unit})", o["comm"].as_str().unwrap_or(""), o["pid"])
                    }
                    None => String::new(),
                };
                format!("{}/{}{owner}", l["port"], str_of(l, "proto"))
            })
            .collect();
        let value = str_of(fix, "value");
        let current = match str_of(fix, "current") {
            "" => "nothing",
            current => current,
        };
        findings.push(Finding {
            severity: Severity::Warning,
            kind: "listener_in_ephemeral_range",
            netns: netns.to_owned(),
            summary: format!(
                "{} listener(s) inside the ephemeral port range in netns {netns}: a restart fails with EADDRINUSE whenever an outbound connection took the port",
                listeners.len()
            ),
            evidence: vec![
                format!("listening inside ip_local_port_range, not reserved: {}", listeners.join(", ")),
                format!("ip_local_reserved_ports now: {current}"),
            ],
            remediation: vec![
                format!("sysctl -w net.ipv4.ip_local_reserved_ports={value}   (in netns {netns}; keeps what is reserved)"),
                format!("echo 'net.ipv4.ip_local_reserved_ports = {value}' > /etc/sysctl.d/60-reserved-ports.conf   (survives a reboot)"),
            ],
        });
    }
}

fn conflicts(evidence: &Evidence, findings: &mut Vec<Finding>) {
    let names: HashMap<u64, &str> = records(&evidence.ephemeral, "pools")
        .filter_map(|p| Some((p["netns"].as_u64()?, p["netns_name"].as_str()?)))
        .collect();
    let mut by_port: BTreeMap<(String, String, u64), Vec<String>> = BTreeMap::new();
    for f in &evidence.failures {
        let conflict = str_of(f, "op") == "bind"
            && str_of(f, "errno") == "EADDRINUSE"
            && f["port"].as_u64().is_some_and(|p| p != 0);
        if !conflict {
            continue;
        }
        let netns = f["netns"]
            .as_u64()
            .and_then(|c| names.get(&c).map(|n| (*n).to_owned()))
            .unwrap_or_default();
        let key = (
            netns,
            str_of(f, "proto").to_owned(),
            f["port"].as_u64().unwrap_or(0),
        );
        by_port
            .entry(key)
            .or_default()
            .push(format!("{}({})", str_of(f, "comm"), f["pid"]));
    }
    for ((netns, proto, port), refused) in by_port {
        let holders: Vec<String> = evidence
            .sockets
            .iter()
            .filter(|s| {
                s.netns == netns
                    && s.proto == proto
                    && u64::from(s.port) == port
                    && matches!(s.state.as_ref(), "listen" | "unconn" | "bound" | "time_wait")
            })
            .map(|s| match &s.owner {
                Some(o) => format!("{}({}) {}", o.comm, o.pid, s.state),
                None => format!("unknown {}", s.state),
            })
            .collect();
        let mut evidence_lines = vec![format!(
            "refused: {} ({} time(s))",
            dedup(&refused).join(", "),
            refused.len()
        )];
        if !holders.is_empty() {
            evidence_lines.push(format!("holding it now: {}", dedup(&holders).join(", ")));
        }
        findings.push(Finding {
            severity: Severity::Warning,
            kind: "port_conflict",
            netns: netns.clone(),
            summary: format!("bind() to {proto} port {port} failed with EADDRINUSE in netns {netns}"),
            evidence: evidence_lines,
            remediation: vec![
                format!("portmon ports -lp --port {port} --netns {netns} names the holder; move one of the two services to another port"),
                "a service that restarts onto its own port: set SO_REUSEADDR before bind()".to_owned(),
            ],
        });
    }
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        if !seen.contains(item) {
            seen.push(item.clone());
        }
    }
    seen
}

fn health(evidence: &Evidence, findings: &mut Vec<Finding>) {
    let metric = |name: &'static str| evidence.metrics.iter().filter(move |(n, _, _)| n == name);
    for (_, labels, n) in metric("portmon_bind_before_connect_total") {
        let comm = labels.get("comm").map_or("", String::as_str);
        findings.push(Finding {
            severity: Severity::Notice,
            kind: "bind_before_connect",
            netns: String::new(),
            summary: format!("{comm} binds sockets to port 0 before connecting ({n} times)"),
            evidence: vec![format!("portmon_bind_before_connect_total{{comm=\"{comm}\"}} {n}: each such socket holds its port for itself, where connect() alone shares it between destinations")],
            remediation: vec![
                format!("in {comm}: setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1) before bind(), or drop the bind()"),
            ],
        });
    }
    for (_, _, dropped) in metric("portmon_events_dropped_total").filter(|(_, _, n)| *n > 0.0) {
        findings.push(Finding {
            severity: Severity::Warning,
            kind: "events_dropped",
            netns: String::new(),
            summary: format!("portmon lost {dropped} failure events: the ring buffer was full"),
            evidence: vec![format!("portmon_events_dropped_total {dropped}")],
            remediation: vec!["a failure storm outran portmon: the counters are exact, the per-failure log is not; find the storm with portmon_bind_errors_total / portmon_connect_errors_total".to_owned()],
        });
    }
    for (_, labels, entries) in metric("portmon_map_entries") {
        let map = labels.get("map").map_or("", String::as_str);
        let capacity = metric("portmon_map_capacity")
            .find(|(_, l, _)| l.get("map").map(String::as_str) == Some(map))
            .map(|(_, _, c)| *c);
        let Some(capacity) = capacity.filter(|c| *c > 0.0) else {
            continue;
        };
        if entries / capacity < MAP_WARNING_RATIO {
            continue;
        }
        let key = match map {
            portmon_common::map::PORT_STATS | portmon_common::map::PORT_TABLES => "port-stats-capacity",
            _ => "sockets-capacity",
        };
        findings.push(Finding {
            severity: Severity::Warning,
            kind: "map_near_capacity",
            netns: String::new(),
            summary: format!("kernel map {map} is {:.0}% full", entries / capacity * 100.0),
            evidence: vec![format!(
                "portmon_map_entries{{map=\"{map}\"}} {entries} of {capacity}"
            )],
            remediation: vec![format!(
                "raise {key} in /etc/portmon/portmon.toml (or --{key}) and restart portmon"
            )],
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{api::OwnerEntry, cli::doctor::metrics};

    fn socket(state: &str, local: &str, remote: &str, owner: Option<(&str, u32)>) -> PortEntry<'static> {
        PortEntry {
            netns: "app".into(),
            proto: "tcp".into(),
            family: "ipv4".into(),
            state: state.to_owned().into(),
            local: local.to_owned().into(),
            remote: remote.to_owned().into(),
            port: local
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0),
            class: "user".into(),
            service: "".into(),
            uid: 0,
            cookie: 0,
            owner: owner.map(|(comm, pid)| OwnerEntry {
                pid,
                comm: comm.into(),
                cgroup: 1,
                unit: None,
            }),
        }
    }

    fn pool(connect_ratio: f64) -> Value {
        json!({"netns": 7, "netns_name": "app", "proto": "tcp", "pool": 100, "in_use": 90,
               "bound": 0, "bind_ratio": 0.5, "connect_ratio": connect_ratio})
    }

    fn kinds(findings: &[Finding]) -> Vec<(Severity, &'static str)> {
        findings.iter().map(|f| (f.severity, f.kind)).collect()
    }

    #[test]
    fn severity_follows_the_alert_thresholds() {
        let cases = [
            (0.5, vec![]),
            (0.85, vec![(Severity::Warning, "pool_high")]),
            (0.96, vec![(Severity::Critical, "pool_high")]),
        ];
        for (ratio, want) in cases {
            let evidence = Evidence {
                ephemeral: json!({"pools": [pool(ratio)]}),
                ..Evidence::default()
            };
            assert_eq!(kinds(&diagnose(&evidence, None)), want, "{ratio}");
        }
    }

    #[test]
    fn a_full_destination_names_its_holders_and_time_wait_when_it_dominates() {
        let mut sockets = vec![socket(
            "established",
            "10.0.0.1:40001",
            "10.0.0.2:80",
            Some(("curl", 42)),
        )];
        for port in 40002..40005 {
            sockets.push(socket(
                "time_wait",
                &format!("10.0.0.1:{port}"),
                "10.0.0.2:80",
                None,
            ));
        }
        let evidence = Evidence {
            ephemeral: json!({
                "pools": [pool(0.97)],
                "destinations": [{"netns": 7, "netns_name": "app", "proto": "tcp",
                                  "remote": "10.0.0.2:80", "connections": 97, "ratio": 0.97}],
            }),
            sockets,
            ..Evidence::default()
        };
        let findings = diagnose(&evidence, None);
        assert_eq!(
            kinds(&findings),
            [
                (Severity::Critical, "pool_high"),
                (Severity::Warning, "time_wait_dominates")
            ]
        );
        let evidence_text = findings[0].evidence.join("\n");
        assert!(
            evidence_text.contains("closed (TIME_WAIT) 3, curl(42) 1"),
            "{evidence_text}"
        );
        assert!(findings[1]
            .remediation
            .iter()
            .any(|r| r.contains("net.ipv4.tcp_tw_reuse=1")));
    }

    #[test]
    fn conflicts_bind_before_connect_and_portmons_health() {
        let metric = |name: &str, labels: &[(&str, &str)], value: f64| {
            let labels = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (name.to_owned(), labels, value)
        };
        let evidence = Evidence {
            ephemeral: json!({"pools": [pool(0.1)]}),
            sockets: vec![socket("listen", "0.0.0.0:8080", "0.0.0.0:0", Some(("nginx", 10)))],
            failures: vec![
                json!({"op": "bind", "errno": "EADDRINUSE", "port": 8080, "proto": "tcp",
                       "netns": 7, "pid": 99, "comm": "java"}),
                // bind(0) finding no port is exhaustion, not a conflict.
                json!({"op": "bind", "errno": "EADDRINUSE", "port": 0, "proto": "tcp",
                       "netns": 7, "pid": 99, "comm": "java"}),
            ],
            metrics: metrics(
                "portmon_bind_before_connect_total{comm=\"curl\"} 3\n\
                 portmon_events_dropped_total 0\n\
                 portmon_map_entries{map=\"SOCKETS\"} 950\n\
                 portmon_map_capacity{map=\"SOCKETS\"} 1000\n\
                 portmon_map_entries{map=\"PORT_STATS\"} 1\n\
                 portmon_map_capacity{map=\"PORT_STATS\"} 1000\n",
            ),
        };
        assert_eq!(
            evidence.metrics[0],
            metric("portmon_bind_before_connect_total", &[("comm", "curl")], 3.0)
        );
        let findings = diagnose(&evidence, None);
        assert_eq!(
            kinds(&findings),
            [
                (Severity::Warning, "port_conflict"),
                (Severity::Warning, "map_near_capacity"),
                (Severity::Notice, "bind_before_connect"),
            ]
        );
        assert!(findings[0].evidence[0].contains("java(99)"), "{:?}", findings[0]);
        assert!(
            findings[0].evidence[1].contains("nginx(10) listen"),
            "{:?}",
            findings[0]
        );
        assert!(findings[1].remediation[0].contains("sockets-capacity"));
        // Only the namespace asked for, and the host-wide ones.
        assert_eq!(diagnose(&evidence, Some("other")).len(), 2);
    }
}
