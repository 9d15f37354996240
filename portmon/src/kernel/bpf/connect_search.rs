//! Reads how long TCP connects spent finding a local port, per namespace
//! (`CONNECT_SEARCH`, one histogram per CPU each), and forgets the
//! namespaces that are gone.

use aya::maps::{Array, MapData, MapError, PerCpuHashMap};
use portmon_common::{SearchHistogram, SEARCH_BUCKETS, SEARCH_FIRST_BOUND_NS};

/// The search histograms and the count of searches they had no room for.
pub struct ConnectSearch {
    pub(super) histograms: PerCpuHashMap<MapData, u64, SearchHistogram>,
    pub(super) overflow: Array<MapData, u64>,
}

impl std::fmt::Debug for ConnectSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSearch").finish_non_exhaustive()
    }
}

/// One namespace's connects, by how long each searched for a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTimes {
    /// Network namespace cookie.
    pub netns: u64,
    /// Searches per bucket, not cumulative; bucket `i` ends at
    /// [`bucket_bound_seconds`]`(i)`.
    pub buckets: [u64; SEARCH_BUCKETS],
    /// Sum of the searches' durations, in nanoseconds.
    pub sum_ns: u64,
}

impl SearchTimes {
    /// Searches counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Upper bound of bucket `i` in seconds; infinite for the last.
pub fn bucket_bound_seconds(i: usize) -> f64 {
    if i + 1 >= SEARCH_BUCKETS {
        return f64::INFINITY;
    }
    (SEARCH_FIRST_BOUND_NS << i) as f64 / 1e9
}

impl ConnectSearch {
    /// Every namespace's histogram, its CPUs' counts summed, by cookie.
    pub fn read(&self) -> Vec<SearchTimes> {
        let mut out: Vec<SearchTimes> = self
            .histograms
            .iter()
            .filter_map(Result::ok)
            .map(|(netns, per_cpu)| {
                let mut times = SearchTimes {
                    netns,
                    buckets: [0; SEARCH_BUCKETS],
                    sum_ns: 0,
                };
                for h in per_cpu.iter() {
                    for (sum, n) in times.buckets.iter_mut().zip(h.buckets) {
                        *sum = sum.saturating_add(n);
                    }
                    times.sum_ns = times.sum_ns.saturating_add(h.sum_ns);
                }
                times
            })
            .collect();
        out.sort_unstable_by_key(|t| t.netns);
        out
    }

    /// Namespaces with a histogram.
    pub fn namespaces(&self) -> u64 {
        self.histograms.keys().filter(Result::is_ok).count() as u64
    }

    /// Searches not counted because the map had no entry left for their
    /// namespace.
    pub fn overflow(&self) -> u64 {
        self.overflow.get(&0, 0).unwrap_or(0)
    }

    /// Drops a namespace's histogram (a namespace that is gone); one not
    /// there is no error.
    pub fn forget(&mut self, netns: u64) -> Result<(), MapError> {
        match self.histograms.remove(&netns) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_from_256_ns_and_end_unbounded() {
        assert_eq!(bucket_bound_seconds(0), 256e-9);
        assert_eq!(bucket_bound_seconds(1), 512e-9);
        assert_eq!(
            bucket_bound_seconds(SEARCH_BUCKETS - 2),
            (1u64 << 30) as f64 / 1e9
        );
        assert!(bucket_bound_seconds(SEARCH_BUCKETS - 1).is_infinite());
    }
}
