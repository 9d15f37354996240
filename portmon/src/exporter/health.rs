//! portmon's own health: dropped events, full maps, attached programs, the
//! registry, failed inventory dumps, the series limit, how long the
//! scrape took, what was built and how the last reload went.

use portmon_common::{map, Family, Proto};

use super::{definitions as def, families::Families, ScrapeInput};
use crate::kernel::bpf::programs::{OPTIONAL, OPT_IN};

/// Adds the health families; `folded` is how many ports the per-port
/// families folded, `scrape_seconds` how long gathering took.
pub fn add(input: &ScrapeInput<'_>, folded: usize, scrape_seconds: f64, families: &mut Families) {
    let h = input.health;
    families.add_one(&def::EVENTS_DROPPED, h.events_dropped as f64);
    families.add_one(&def::FAILURE_EVENTS, h.failures_seen as f64);
    let log = input.failure_log;
    families.add_one(&def::FAILURE_EVENTS_UNDECODABLE, log.undecodable as f64);
    families.add_one(&def::FAILURE_COUNTS_FOLDED, log.folded as f64);
    families.add_one(&def::LOG_LINES_SUPPRESSED, log.log_lines_held as f64);
    families.add_one(&def::HOLDERS_NOT_LOOKED_UP, log.holders_not_looked_up as f64);
    families.add_one(&def::OWNER_WALKS, input.owner_walks.0 as f64);
    families.add_one(&def::OWNER_WALKS_CUT_SHORT, input.owner_walks.1 as f64);
    families.add_one(&def::THREADS_REFUSED, crate::kernel::threads::refused() as f64);
    families.add_one(&def::NETNS_UNWATCHED, input.netns_unwatched as f64);
    families.add_one(&def::NETNS_SCAN_ERRORS, input.netns_scan_errors as f64);
    families.add_one(&def::INVENTORY_WALKED, f64::from(u8::from(input.walk.0)));
    families.add_one(&def::INVENTORY_WALK_ERRORS, input.walk.1 as f64);
    families.add(
        &def::MAP_OVERFLOWS,
        [
            (map::PORT_STATS, h.port_stats_overflow),
            (map::PORT_TABLES, h.port_tables_overflow),
            (map::SOCKETS, h.sockets_overflow),
            (map::BIND_BEFORE_CONNECT, h.bind_before_connect_overflow),
            (map::POOL_KEYS, h.pools_overflow),
            (map::CONNECT_SEARCH, input.connect_search_overflow),
        ]
        .map(|(name, n)| (vec![name.to_owned()], n as f64)),
    );
    families.add_one(&def::USER_QUOTA_REFUSALS, h.owner_quota_refused as f64);
    let mut overflow: std::collections::BTreeMap<(u64, Proto, Family, usize), u64> = Default::default();
    for o in input.overflow {
        *overflow.entry((o.netns, o.proto, o.family, o.class)).or_default() += o.count;
    }
    families.add(
        &def::PORT_OVERFLOW,
        overflow.into_iter().map(|((netns, proto, family, class), n)| {
            let first = match class {
                portmon_common::range_class::SYSTEM => 0,
                portmon_common::range_class::USER => 1024,
                _ => 49152,
            };
            let values = vec![
                crate::namespaces::display_name(input.netns_names, netns),
                proto.label().to_owned(),
                family.label().to_owned(),
                crate::port_class::PortClass::of(first).label().to_owned(),
            ];
            (values, n as f64)
        }),
    );
    families.add(
        &def::MAP_ENTRIES,
        input
            .maps
            .iter()
            .map(|m| (vec![m.name.to_owned()], m.entries as f64)),
    );
    families.add(
        &def::MAP_CAPACITY,
        input
            .maps
            .iter()
            .map(|m| (vec![m.name.to_owned()], m.capacity as f64)),
    );
    // An optional program whose hook this kernel lacks has no series: a 0
    // there would page someone for a kernel's age (raw tracepoint links,
    // the optional ones', cannot be detached from outside). Nor has an
    // opt-in program nobody asked for.
    families.add(
        &def::PROGRAM_ATTACHED,
        crate::kernel::bpf::PROGRAMS
            .iter()
            .filter(|(name, _)| {
                !(OPTIONAL.contains(name) || OPT_IN.contains(name)) || input.programs.contains(name)
            })
            .map(|(name, _)| {
                let attached = input.programs.contains(name);
                (vec![(*name).to_owned()], f64::from(u8::from(attached)))
            }),
    );
    families.add(
        &def::PROGRAM_RECURSION_MISSES,
        input
            .program_misses
            .iter()
            .map(|m| (vec![m.program.to_owned()], m.misses as f64)),
    );
    if let Some(runs) = input.program_runs {
        families.add(
            &def::PROGRAM_RUNS,
            runs.iter().map(|r| (vec![r.program.to_owned()], r.runs as f64)),
        );
        families.add(
            &def::PROGRAM_RUN_SECONDS,
            runs.iter()
                .map(|r| (vec![r.program.to_owned()], r.run_time.as_secs_f64())),
        );
    }
    let source = input.registry.source();
    families.add(
        &def::REGISTRY_ENTRIES,
        [(vec![source.format.label().to_owned()], source.entries as f64)],
    );
    families.add(
        &def::INVENTORY_ERRORS,
        Proto::ALL.iter().flat_map(|&proto| {
            Family::ALL.iter().map(move |&family| {
                let n = input.inventory_errors.get(&(proto, family)).copied().unwrap_or(0);
                (
                    vec![proto.label().to_owned(), family.label().to_owned()],
                    n as f64,
                )
            })
        }),
    );
    families.add_one(&def::PORT_SERIES_FOLDED, folded as f64);
    families.add_one(&def::PORT_SERIES_LIMIT, input.port_series_limit as f64);
    families.add_one(&def::SCRAPE_DURATION, scrape_seconds);
    families.add_one(&def::SNAPSHOTS, input.snapshots as f64);
    families.add_one(
        &def::CONFIG_LAST_RELOAD_SUCCESSFUL,
        f64::from(u8::from(input.reload.last_successful)),
    );
    // A clock set before 1970 reads as 0, which no dashboard mistakes for now.
    let since_epoch = input
        .reload
        .last_success
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    families.add_one(&def::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP, since_epoch);
    families.add(
        &def::BUILD_INFO,
        [(
            [
                env!("CARGO_PKG_VERSION"),
                env!("PORTMON_REVISION"),
                env!("PORTMON_RUSTC_VERSION"),
            ]
            .map(str::to_owned)
            .to_vec(),
            1.0,
        )],
    );
}
