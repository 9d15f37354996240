//! The ephemeral-port exhaustion families. Their `netns` label is always
//! there: a pool belongs to a namespace.

use portmon_common::{Op, Proto};

use super::{
    definitions as def,
    families::{Families, Series},
    ScrapeInput,
};
use crate::{exhaustion as ephemeral, namespaces::display_name};

/// Adds the exhaustion families.
pub fn add(input: &ScrapeInput<'_>, families: &mut Families) {
    let report = input.ephemeral;
    let name = |netns: u64| display_name(input.netns_names, netns);
    let mut pool_ports = Series::new();
    let mut in_use = Series::new();
    let mut bound = Series::new();
    let mut utilization = Series::new();
    for p in &report.pools {
        let netns = name(p.netns);
        let proto = p.proto.label().to_owned();
        pool_ports.insert(vec![netns.clone()], f64::from(p.pool));
        in_use.insert(vec![netns.clone(), proto.clone()], f64::from(p.in_use));
        bound.insert(vec![netns.clone(), proto.clone()], f64::from(p.bound));
        for (op, ratio) in [(Op::Bind, p.bind_ratio), (Op::Connect, p.connect_ratio)] {
            utilization.insert(vec![netns.clone(), op.label().to_owned(), proto.clone()], ratio);
        }
    }
    families.add(&def::EPHEMERAL_POOL_PORTS, pool_ports);
    families.add(&def::EPHEMERAL_PORTS_IN_USE, in_use);
    families.add(&def::EPHEMERAL_BOUND_PORTS, bound);
    families.add(&def::EPHEMERAL_UTILIZATION, utilization);

    let destinations: Series = report
        .destinations
        .iter()
        .map(|d| {
            let values = vec![
                name(d.netns),
                d.proto.label().to_owned(),
                d.remote.ip().to_string(),
                d.remote.port().to_string(),
            ];
            (values, d.ratio)
        })
        .collect();
    families.add(&def::EPHEMERAL_DESTINATION_UTILIZATION, destinations);

    // Every namespace with a pool has its counters from zero, so rate()
    // and increase() see the first error.
    let mut errors = Series::new();
    let mut namespaces: Vec<u64> = report.pools.iter().map(|p| p.netns).collect();
    namespaces.dedup();
    for netns in namespaces {
        for &proto in Proto::ALL {
            for op in [Op::Bind, Op::Connect] {
                errors.insert(errors_values(name(netns), proto, op), 0.0);
            }
        }
    }
    for (k, n) in input.failures {
        if let Some(op) = ephemeral::exhausted(k.op, k.proto, k.errno, k.port) {
            *errors
                .entry(errors_values(name(k.netns), k.proto, op))
                .or_default() += *n as f64;
        }
    }
    families.add(&def::EPHEMERAL_EXHAUSTION_ERRORS, errors);
    let assigned: Series = input
        .assigned
        .iter()
        .map(|a| {
            let values = vec![
                name(a.netns),
                a.proto.label().to_owned(),
                a.family.label().to_owned(),
                a.how.label().to_owned(),
            ];
            (values, a.count as f64)
        })
        .collect();
    families.add(&def::EPHEMERAL_PORTS_ASSIGNED, assigned);
    families.add_one(&def::EPHEMERAL_ASSESSMENT, input.ephemeral_seconds);

    let offenders: Series = input
        .bind_before_connect
        .iter()
        .map(|(comm, n)| (vec![comm.clone()], *n as f64))
        .collect();
    families.add(&def::BIND_BEFORE_CONNECT, offenders);
    listeners(input, families);
}

/// At most this many info series of listeners in the pool: a host with more
/// has one fix to make either way, and the count says how many.
pub const LISTENER_INFO_LIMIT: usize = 100;

fn listeners(input: &ScrapeInput<'_>, families: &mut Families) {
    let report = input.ephemeral;
    let name = |netns: u64| display_name(input.netns_names, netns);
    // Zero for every namespace with a pool, so the alert's `> 0` has a
    // series to compare and the dashboard shows the all-clear.
    let mut counts = Series::new();
    for p in &report.pools {
        counts.insert(vec![name(p.netns), p.proto.label().to_owned()], 0.0);
    }
    for l in &report.listeners {
        *counts
            .entry(vec![name(l.netns), l.proto.label().to_owned()])
            .or_default() += 1.0;
    }
    families.add(&def::LISTENERS_IN_EPHEMERAL_RANGE, counts);
    let info: Series = report
        .listeners
        .iter()
        .take(LISTENER_INFO_LIMIT)
        .map(|l| {
            let (comm, unit) = l.owner.as_ref().map_or((String::new(), String::new()), |o| {
                (o.comm.clone(), o.unit.clone().unwrap_or_default())
            });
            let values = vec![
                name(l.netns),
                l.proto.label().to_owned(),
                l.port.to_string(),
                comm,
                unit,
            ];
            (values, 1.0)
        })
        .collect();
    families.add(&def::LISTENER_IN_EPHEMERAL_RANGE_INFO, info);
}

fn errors_values(netns: String, proto: Proto, op: Op) -> Vec<String> {
    vec![netns, op.label().to_owned(), proto.label().to_owned()]
}
