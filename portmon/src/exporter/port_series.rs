//! Which ports have series of their own and which fold into their range
//! class (`port="other"`), within `port-series-limit`.
//!
//! Counters (`_total`): a port gets its own series the first time it has a
//! counter to export, while fewer than the limit have one (first come,
//! first served; ports new in the same scrape go busiest first), and keeps
//! that assignment for the daemon's lifetime — own or folded. Why: a port
//! that moved from its own series into the folded one would end a series
//! and raise the folded one, and a port that moved back would lower the
//! folded series; Prometheus reads a lower counter as a reset and
//! `rate()`/`increase()` then invent traffic.
//!
//! Gauges are ranked again at every scrape (listeners first, then the most
//! sockets): a gauge has no history to break.

use foldhash::{HashMap as FastMap, HashSet as FastSet};
use portmon_common::{Family, Proto};

use super::NetnsLabel;
use crate::{failures::Errno, port_class::PortClass};

/// The `port` label of a class's folded series: a value no port number
/// can take, so that a query tells it from a series without the label
/// (`port=""` matches both).
pub const FOLDED_PORT: &str = "other";

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
    /// The namespace of the series.
    pub fn netns(&self) -> u64 {
        match *self {
            SeriesKey::Port(id) => id.netns,
            SeriesKey::Folded { netns, .. } => netns,
        }
    }

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

/// Which ports' counters have series of their own: decided the first time
/// a port has a counter, kept for the daemon's lifetime.
#[derive(Debug, Default)]
pub struct CounterAssignment {
    own: FastSet<PortId>,
    folded: FastSet<PortId>,
}

impl CounterAssignment {
    /// Decides for every port not decided yet: its own series while fewer
    /// than `limit` ports have one, busiest first; else folded. A lower
    /// limit after a reload takes nothing away (that would be a reset):
    /// it only stops handing out more.
    pub fn admit(&mut self, ports: impl IntoIterator<Item = (PortId, Activity)>, limit: usize) {
        let mut new: Vec<(PortId, Activity)> =
            ports.into_iter().filter(|(id, _)| !self.decided(id)).collect();
        new.sort_unstable_by(busier);
        for (id, _) in new {
            if self.decided(&id) {
                continue;
            }
            if self.own.len() < limit {
                self.own.insert(id);
            } else {
                self.folded.insert(id);
            }
        }
    }

    /// Forgets the ports of namespaces `live` does not name.
    pub fn retain_netns(&mut self, live: &FastSet<u64>) {
        self.own.retain(|id| live.contains(&id.netns));
        self.folded.retain(|id| live.contains(&id.netns));
    }

    fn decided(&self, id: &PortId) -> bool {
        self.own.contains(id) || self.folded.contains(id)
    }

    /// The series a decided port's counters go to.
    pub fn key(&self, id: PortId) -> SeriesKey {
        if self.own.contains(&id) {
            SeriesKey::Port(id)
        } else {
            SeriesKey::folded(id)
        }
    }

    /// Ports whose counters fold.
    pub fn folded(&self) -> &FastSet<PortId> {
        &self.folded
    }
}

/// The ports whose gauges have series of their own this scrape: the
/// busiest `limit` of `activity`.
pub fn busiest(activity: &FastMap<PortId, Activity>, limit: usize) -> FastSet<PortId> {
    let mut ranked: Vec<(PortId, Activity)> = activity.iter().map(|(id, a)| (*id, *a)).collect();
    // Only the boundary matters: a linear selection, not a sort of every port.
    if ranked.len() > limit && limit > 0 {
        ranked.select_nth_unstable_by(limit - 1, busier);
    }
    ranked.into_iter().take(limit).map(|(id, _)| id).collect()
}

/// What the per-port families keep from one scrape to the next.
#[derive(Debug, Default)]
pub struct SeriesMemory {
    pub counters: CounterAssignment,
    pub floors: CounterFloors,
    /// Whether per-port series have carried `netns`: once on, it stays
    /// on, since turning it off would change every series' identity again.
    netns_label: bool,
}

impl SeriesMemory {
    /// Forgets every series of namespaces `live` does not name: a
    /// namespace's counters are exported until its grace period ends, so
    /// one with none left is gone for good.
    pub fn retain_netns(&mut self, live: &FastSet<u64>) {
        self.counters.retain_netns(live);
        self.floors.retain_netns(live);
    }

    /// Whether per-port series carry `netns` this scrape, given the
    /// setting and how many namespaces the scrape saw.
    pub fn with_netns(&mut self, setting: NetnsLabel, namespaces: usize) -> bool {
        self.netns_label |= setting == NetnsLabel::Always || namespaces > 1;
        self.netns_label
    }
}

/// A counter series' identity across scrapes: family, series and errno.
type CounterId = (&'static str, SeriesKey, Option<Errno>);

/// The last value of every counter series exported: a series once
/// exported stays, and never goes lower, whatever one read of the kernel
/// maps returns (a failed or partial read must not look like a reset).
/// Keyed by identity, not label text, so that a namespace's new name or the
/// `netns` label turning on renames a series instead of doubling it.
#[derive(Debug, Default)]
pub struct CounterFloors {
    last: FastMap<CounterId, f64>,
}

impl CounterFloors {
    /// Forgets the series of namespaces `live` does not name.
    pub fn retain_netns(&mut self, live: &FastSet<u64>) {
        self.last.retain(|(_, key, _), _| live.contains(&key.netns()));
    }

    /// This scrape's values of `family`, raised to what was exported
    /// before, with every series exported before.
    pub fn settle(
        &mut self,
        family: &'static str,
        now: FastMap<(SeriesKey, Option<Errno>), f64>,
    ) -> Vec<(SeriesKey, Option<Errno>, f64)> {
        for ((key, errno), value) in now {
            let last = self.last.entry((family, key, errno)).or_insert(value);
            *last = last.max(value);
        }
        self.last
            .iter()
            .filter(|((f, _, _), _)| *f == family)
            .map(|(&(_, key, errno), &value)| (key, errno, value))
            .collect()
    }
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

    fn busy(total: u64) -> Activity {
        Activity { listening: 0, total }
    }

    #[test]
    fn first_come_first_served_then_folded_for_good() {
        let mut a = CounterAssignment::default();
        a.admit([(id(1), busy(1)), (id(2), busy(9)), (id(3), busy(5))], 2);
        assert_eq!(a.key(id(2)), SeriesKey::Port(id(2)), "busiest of the first batch");
        assert_eq!(a.key(id(3)), SeriesKey::Port(id(3)));
        assert_eq!(a.key(id(1)), SeriesKey::folded(id(1)));
        // Port 1 becomes the busiest and the limit grows: it stays folded,
        // a newcomer takes the room.
        a.admit([(id(1), busy(100)), (id(4), busy(1))], 3);
        assert_eq!(a.key(id(1)), SeriesKey::folded(id(1)));
        assert_eq!(a.key(id(4)), SeriesKey::Port(id(4)));
        // A lower limit takes nothing away.
        a.admit([(id(5), busy(1))], 1);
        assert_eq!(a.key(id(2)), SeriesKey::Port(id(2)));
        assert_eq!(a.key(id(5)), SeriesKey::folded(id(5)));
        assert_eq!(a.folded().len(), 2);
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
        activity.insert(id(50_000), busy(500));
        activity.insert(id(50_001), busy(400));
        let kept = busiest(&activity, 2);
        assert!(kept.contains(&id(80)) && kept.contains(&id(50_000)), "{kept:?}");
    }

    #[test]
    fn floors_keep_series_and_never_go_lower() {
        let mut floors = CounterFloors::default();
        let key = SeriesKey::Port(id(80));
        let now = |v: f64| FastMap::from_iter([((key, None), v)]);
        assert_eq!(floors.settle("a_total", now(5.0)), [(key, None, 5.0)]);
        assert_eq!(floors.settle("a_total", now(3.0)), [(key, None, 5.0)]);
        assert_eq!(floors.settle("a_total", FastMap::default()), [(key, None, 5.0)]);
        assert_eq!(floors.settle("a_total", now(7.0)), [(key, None, 7.0)]);
        assert!(floors.settle("b_total", FastMap::default()).is_empty());
    }

    #[test]
    fn the_netns_label_once_on_stays_on() {
        let mut memory = SeriesMemory::default();
        assert!(!memory.with_netns(NetnsLabel::Auto, 1));
        assert!(memory.with_netns(NetnsLabel::Auto, 2));
        assert!(memory.with_netns(NetnsLabel::Auto, 1), "one namespace left");
        let mut memory = SeriesMemory::default();
        assert!(memory.with_netns(NetnsLabel::Always, 1));
        assert!(
            memory.with_netns(NetnsLabel::Auto, 1),
            "always, then auto on reload"
        );
    }
}
