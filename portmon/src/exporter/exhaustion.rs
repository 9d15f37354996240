//! The ephemeral-port exhaustion families. Their `netns` label is always
//! there: a pool belongs to a namespace.

use std::collections::BTreeMap;

use portmon_common::{Op, Proto};
use prometheus::proto::MetricType;

use super::Families;
use crate::ephemeral;

type Series = BTreeMap<Vec<(&'static str, String)>, f64>;

impl Families<'_> {
    pub(super) fn ephemeral(&mut self) {
        let input = self.input;
        let report = input.ephemeral;
        let mut pool_ports = Series::new();
        let mut in_use = Series::new();
        let mut bound = Series::new();
        let mut utilization = Series::new();
        for p in &report.pools {
            let netns = self.netns_name(p.netns);
            pool_ports.insert(vec![("netns", netns.clone())], f64::from(p.pool));
            let by_proto = vec![("netns", netns.clone()), ("proto", p.proto.label().to_owned())];
            in_use.insert(by_proto.clone(), f64::from(p.in_use));
            bound.insert(by_proto, f64::from(p.bound));
            for (op, ratio) in [(Op::Bind, p.bind_ratio), (Op::Connect, p.connect_ratio)] {
                let labels = vec![
                    ("netns", netns.clone()),
                    ("op", op.label().to_owned()),
                    ("proto", p.proto.label().to_owned()),
                ];
                utilization.insert(labels, ratio);
            }
        }
        self.add_all(
            "portmon_ephemeral_pool_ports",
            "Ports the kernel may hand out as ephemeral ports: ip_local_port_range minus ip_local_reserved_ports.",
            MetricType::GAUGE,
            pool_ports,
        );
        self.add_all(
            "portmon_ephemeral_ports_in_use",
            "Distinct ports of the ephemeral pool held by any socket, TIME_WAIT included: what bind(0) and UDP auto-bind compete for.",
            MetricType::GAUGE,
            in_use,
        );
        self.add_all(
            "portmon_ephemeral_bound_ports",
            "Ports of the ephemeral pool held by bound sockets (bind, listen; for UDP every socket): out of reach of every connect().",
            MetricType::GAUGE,
            bound,
        );
        self.add_all(
            "portmon_ephemeral_utilization_ratio",
            "How full the ephemeral pool is by the kernel's rules: op=bind, ports in use over the pool; op=connect, the busiest destination's connections over the pool minus bound ports. 1 means the next such operation fails.",
            MetricType::GAUGE,
            utilization,
        );

        let destinations: Series = report
            .destinations
            .iter()
            .map(|d| {
                let labels = vec![
                    ("netns", self.netns_name(d.netns)),
                    ("proto", d.proto.label().to_owned()),
                    ("remote_addr", d.remote.ip().to_string()),
                    ("remote_port", d.remote.port().to_string()),
                ];
                (labels, d.ratio)
            })
            .collect();
        self.add_all(
            "portmon_ephemeral_destination_utilization_ratio",
            "Connections to one destination over what connect() has left for it (the ephemeral pool minus bound ports), for the busiest destinations only (ephemeral-destinations).",
            MetricType::GAUGE,
            destinations,
        );

        // Every namespace with a pool has its counters from zero, so rate()
        // and increase() see the first error.
        let mut errors = Series::new();
        let mut namespaces: Vec<u64> = report.pools.iter().map(|p| p.netns).collect();
        namespaces.dedup();
        for netns in namespaces {
            for &proto in Proto::ALL {
                for op in [Op::Bind, Op::Connect] {
                    errors.insert(errors_labels(self.netns_name(netns), proto, op), 0.0);
                }
            }
        }
        for (k, n) in input.failures {
            if let Some(op) = ephemeral::exhausted(k.op, k.proto, k.errno, k.port) {
                *errors
                    .entry(errors_labels(self.netns_name(k.netns), k.proto, op))
                    .or_default() += *n as f64;
            }
        }
        self.add_all(
            "portmon_ephemeral_exhaustion_errors_total",
            "Operations that failed for want of an ephemeral port: TCP connect (EADDRNOTAVAIL), UDP connect (EAGAIN), bind to port 0 (EADDRINUSE). The process is in the log and in /api/v1/failures.",
            MetricType::COUNTER,
            errors,
        );

        self.add_all(
            "portmon_ephemeral_assessment_seconds",
            "Time this scrape spent assessing the ephemeral pools (part of portmon_scrape_duration_seconds).",
            MetricType::GAUGE,
            Series::from([(vec![], input.ephemeral_seconds)]),
        );

        let offenders: Series = input
            .bind_before_connect
            .iter()
            .map(|(comm, n)| (vec![("comm", comm.clone())], *n as f64))
            .collect();
        self.add_all(
            "portmon_bind_before_connect_total",
            "TCP connects from sockets bound to port 0 first (without IP_BIND_ADDRESS_NO_PORT), which hold their port exclusively, by command name.",
            MetricType::COUNTER,
            offenders,
        );
    }
}

fn errors_labels(netns: String, proto: Proto, op: Op) -> Vec<(&'static str, String)> {
    vec![
        ("netns", netns),
        ("op", op.label().to_owned()),
        ("proto", proto.label().to_owned()),
    ]
}
