//! Reads the kernel's counters: per-port activity and portmon's own health.

use aya::maps::{Array, HashMap, MapData};
use portmon_common::{slot, Family, PortKey, PortStats, Proto, Role};

/// The counters of one port in one namespace, from one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCount {
    /// Network namespace cookie.
    pub netns: u64,
    pub proto: Proto,
    pub family: Family,
    pub role: Role,
    pub port: u16,
    pub stats: PortStats,
}

/// portmon's own health, as the kernel side counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Failure events the ring buffer had no room for.
    pub events_dropped: u64,
    /// Counter increments lost to a full `PORT_STATS`.
    pub port_stats_overflow: u64,
    /// Sockets not tracked because `SOCKETS` was full.
    pub sockets_overflow: u64,
    /// Failures the kernel side detected, delivered or not.
    pub failures_seen: u64,
    /// Updates lost to a full `BIND_BEFORE_CONNECT`.
    pub bind_before_connect_overflow: u64,
}

/// Reads every port's counters. Entries the kernel deletes or that carry
/// values portmon does not know are skipped: the map changes while it is read.
pub fn read_ports(map: &HashMap<MapData, PortKey, PortStats>) -> Vec<PortCount> {
    crate::map_batch::read_all(map)
        .into_iter()
        .filter_map(|(key, stats)| {
            Some(PortCount {
                netns: key.netns,
                proto: Proto::try_from(key.proto).ok()?,
                family: Family::try_from(key.family).ok()?,
                role: Role::try_from(key.role).ok()?,
                port: key.port,
                stats,
            })
        })
        .collect()
}

/// Reads the health counters.
pub fn read_health(map: &Array<MapData, u64>) -> Health {
    let get = |slot: u32| map.get(&slot, 0).unwrap_or(0);
    Health {
        events_dropped: get(slot::EVENTS_DROPPED),
        port_stats_overflow: get(slot::PORT_STATS_OVERFLOW),
        sockets_overflow: get(slot::SOCKETS_OVERFLOW),
        failures_seen: get(slot::FAILURES_SEEN),
        bind_before_connect_overflow: get(slot::BIND_BEFORE_CONNECT_OVERFLOW),
    }
}
