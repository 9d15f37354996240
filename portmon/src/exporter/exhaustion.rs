//! The ephemeral-port exhaustion families. Their `netns` label is always
//! there: a pool belongs to a namespace.

use std::collections::BTreeMap;

use portmon_common::{Op, Proto};

use super::{
    definitions as def,
    families::{Families, Series},
    ScrapeInput,
};
use crate::{exhaustion as ephemeral, namespaces::display_name};

/// Adds the exhaustion families. Series are keyed by number, not by label
/// text, until written: each namespace adds a dozen, and comparing the
/// label strings of thousands was much of a scrape's cost.
pub fn add(input: &ScrapeInput<'_>, families: &mut Families) {
    let report = input.ephemeral;
    let name = |netns: u64| display_name(input.netns_names, netns);
    let mut pool_ports = BTreeMap::new();
    let mut in_use = Vec::new();
    let mut bound = Vec::new();
    let mut utilization = Vec::new();
    for p in &report.pools {
        let netns = name(p.netns);
        let proto = p.proto.label().to_owned();
        pool_ports.insert(p.netns, f64::from(p.pool));
        in_use.push((vec![netns.clone(), proto.clone()], f64::from(p.in_use)));
        bound.push((vec![netns.clone(), proto.clone()], f64::from(p.bound)));
        for (op, ratio) in [(Op::Bind, p.bind_ratio), (Op::Connect, p.connect_ratio)] {
            utilization.push((vec![netns.clone(), op.label().to_owned(), proto.clone()], ratio));
        }
    }
    let pool_ports = pool_ports.into_iter().map(|(netns, n)| (vec![name(netns)], n));
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
    let mut errors: BTreeMap<(u64, Op, Proto), f64> = BTreeMap::new();
    for p in &report.pools {
        for &proto in Proto::ALL {
            for op in [Op::Bind, Op::Connect] {
                errors.insert((p.netns, op, proto), 0.0);
            }
        }
    }
    for (k, n) in input.failures {
        if let Some(op) = ephemeral::exhausted(k.op, k.proto, k.errno, k.port) {
            *errors.entry((k.netns, op, k.proto)).or_default() += *n as f64;
        }
    }
    let errors = errors.into_iter().map(|((netns, op, proto), n)| {
        let values = vec![name(netns), op.label().to_owned(), proto.label().to_owned()];
        (values, n)
    });
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
    let mut counts: BTreeMap<(u64, Proto), f64> = BTreeMap::new();
    for p in &report.pools {
        counts.insert((p.netns, p.proto), 0.0);
    }
    for l in &report.listeners {
        *counts.entry((l.netns, l.proto)).or_default() += 1.0;
    }
    let counts = counts
        .into_iter()
        .map(|((netns, proto), n)| (vec![name(netns), proto.label().to_owned()], n));
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
