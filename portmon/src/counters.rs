//! Reads the kernel's counters: per-port activity (`PORT_STATS` blocks, and
//! the live sockets of the socket table) and portmon's own health.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData};
use portmon_common::{kind, slot, Family, PortBlock, PortBlockKey, PortStats, Proto, Role, PORTS_PER_BLOCK};

use crate::socket_table::Followed;

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
    /// Sockets not followed because their slots in `SOCKETS` were taken.
    pub sockets_overflow: u64,
    /// Failures the kernel side detected, delivered or not.
    pub failures_seen: u64,
    /// Updates lost to a full `BIND_BEFORE_CONNECT`.
    pub bind_before_connect_overflow: u64,
}

type PortId = (u64, Proto, Family, Role, u16);

/// Every port's counters: the blocks' counters, and the live sockets of
/// `followed` on each port. Blocks with values portmon does not know are
/// skipped.
pub fn read_ports(map: &HashMap<MapData, PortBlockKey, PortBlock>, followed: &[Followed]) -> Vec<PortCount> {
    let mut ports: BTreeMap<PortId, PortStats> = BTreeMap::new();
    for (key, block) in crate::map_batch::read_all(map) {
        let (Ok(proto), Ok(family), Ok(role)) = (
            Proto::try_from(key.proto),
            Family::try_from(key.family),
            Role::of_kind(key.kind),
        ) else {
            continue;
        };
        for (i, &n) in block.counts.iter().enumerate().filter(|(_, n)| **n != 0) {
            let port = key.block as usize * PORTS_PER_BLOCK + i;
            let Ok(port) = u16::try_from(port) else { continue };
            let stats = ports.entry((key.netns, proto, family, role, port)).or_default();
            match key.kind {
                kind::BINDS => stats.binds = n,
                kind::LISTENS => stats.listens = n,
                _ => stats.connects = n,
            }
        }
    }
    for f in followed {
        let (Ok(proto), Ok(family)) = (Proto::try_from(f.slot.proto), Family::try_from(f.slot.family)) else {
            continue;
        };
        let ends = [(Role::Local, f.holds_local()), (Role::Remote, f.connected_to())];
        for (role, port) in ends {
            if let Some(port) = port {
                ports
                    .entry((f.slot.netns, proto, family, role, port))
                    .or_default()
                    .live += 1;
            }
        }
    }
    ports
        .into_iter()
        .map(|((netns, proto, family, role, port), stats)| PortCount {
            netns,
            proto,
            family,
            role,
            port,
            stats,
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
