//! `portmon_connect_port_search_seconds`: how long TCP connects spent
//! finding a local port, one histogram per namespace. Its `netns` label is
//! always there: a pool belongs to a namespace.

use super::{definitions as def, families::Families, ScrapeInput};
use crate::{kernel::bpf::connect_search::bucket_bound_seconds, namespaces::display_name};

/// Adds the search histograms.
pub fn add(input: &ScrapeInput<'_>, families: &mut Families) {
    families.add_histograms(
        &def::CONNECT_PORT_SEARCH,
        input.connect_search.iter().map(|t| {
            let buckets = t
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &n)| (bucket_bound_seconds(i), n))
                .collect();
            (
                vec![display_name(input.netns_names, t.netns)],
                buckets,
                t.sum_ns as f64 / 1e9,
            )
        }),
    );
}
