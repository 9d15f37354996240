//! Which ports have series of their own and which fold into their range
//! class (`port=""`), within `port-series-limit`: the busiest ports of the
//! scrape (listeners first), ranked again at every scrape.

use std::collections::HashSet;

use portmon_common::{Family, Proto};

use crate::{
    fnv::{FastMap, Fnv},
    port_class::PortClass,
};

pub type FastSet<T> = HashSet<T, std::hash::BuildHasherDefault<Fnv>>;

/// One port of one namespace: what a per-port series stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId {
    pub netns: u64,
    pub proto: Proto,
    pub family: Family,
    pub port: u16,
}

/// The series a port's numbers are added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesKey {
    Port(PortId),
    Folded {
        netns: u64,
        proto: Proto,
        family: Family,
        class: PortClass,
    },
}

impl SeriesKey {
    /// The class series `id` folds into.
    pub fn folded(id: PortId) -> Self {
        SeriesKey::Folded {
            netns: id.netns,
            proto: id.proto,
            family: id.family,
            class: PortClass::of(id.port),
        }
    }
}

/// How busy a port is now, for ranking: listening sockets first, then
/// sockets and events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Activity {
    pub listening: u64,
    pub total: u64,
}

/// Busiest first, ties by port so the choice does not depend on hashing.
fn busier(a: &(PortId, Activity), b: &(PortId, Activity)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The ports with series of their own this scrape: the busiest `limit` of
/// `activity`.
pub fn busiest(activity: &FastMap<PortId, Activity>, limit: usize) -> FastSet<PortId> {
    let mut ranked: Vec<(PortId, Activity)> = activity.iter().map(|(id, a)| (*id, *a)).collect();
    // Only the boundary matters: a linear selection, not a sort of every port.
    if ranked.len() > limit && limit > 0 {
        ranked.select_nth_unstable_by(limit - 1, busier);
    }
    ranked.into_iter().take(limit).map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16) -> PortId {
        PortId {
            netns: 1,
            proto: Proto::Tcp,
            family: Family::Inet,
            port,
        }
    }

    #[test]
    fn listeners_rank_before_busier_ports() {
        let mut activity = FastMap::default();
        activity.insert(
            id(80),
            Activity {
                listening: 1,
                total: 1,
            },
        );
        activity.insert(
            id(50_000),
            Activity {
                listening: 0,
                total: 500,
            },
        );
        activity.insert(
            id(50_001),
            Activity {
                listening: 0,
                total: 400,
            },
        );
        let kept = busiest(&activity, 2);
        assert!(kept.contains(&id(80)) && kept.contains(&id(50_000)), "{kept:?}");
    }
}
