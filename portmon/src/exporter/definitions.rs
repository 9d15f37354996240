//! Every metric family portmon exports: name, help, type and label names,
//! in one table. The collector's descriptors come from here, and every
//! series is labelled through it, so the two cannot disagree.

use prometheus::proto::MetricType;

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// Label names, in the order the exposition writes them.
    pub labels: &'static [&'static str],
    /// Whether `netns` is left out of `labels` while portmon watches a
    /// single network namespace (`netns-label = "auto"`).
    pub netns_optional: bool,
}

impl Definition {
    /// The label names a series carries, with or without the optional `netns`.
    pub fn label_names(&self, with_netns: bool) -> impl Iterator<Item = &'static str> + '_ {
        let drop_netns = self.netns_optional && !with_netns;
        self.labels
            .iter()
            .copied()
            .filter(move |&name| !(drop_netns && name == "netns"))
    }
}

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition {
        name,
        help,
        kind: MetricType::COUNTER,
        labels,
        netns_optional: false,
    }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition {
        name,
        help,
        kind: MetricType::GAUGE,
        labels,
        netns_optional: false,
    }
}

const fn histogram(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition {
        name,
        help,
        kind: MetricType::HISTOGRAM,
        labels,
        netns_optional: false,
    }
}

/// A family with the per-port labels, `netns` among them only when needed.
const fn per_port(def: Definition) -> Definition {
    Definition {
        netns_optional: true,
        ..def
    }
}

const PORT: &[&str] = &["proto", "family", "port", "class", "service", "netns"];
const PORT_ERRNO: &[&str] = &["proto", "family", "port", "class", "service", "netns", "errno"];
const PORT_STATE: &[&str] = &["proto", "family", "port", "class", "service", "netns", "state"];
const PORT_SCOPE_ASSIGNMENT: &[&str] = &[
    "proto",
    "family",
    "port",
    "class",
    "service",
    "netns",
    "scope",
    "assignment",
];

pub const BINDS: Definition = per_port(counter(
    "portmon_binds_total",
    "Successful bind() calls, by the port bound.",
    PORT,
));
pub const CONNECTS: Definition = per_port(counter(
    "portmon_connects_total",
    "Successful outbound connects (TCP established, UDP connected), by destination port.",
    PORT,
));
pub const BIND_ERRORS: Definition = per_port(counter(
    "portmon_bind_errors_total",
    "Failed bind() calls, by port and errno.",
    PORT_ERRNO,
));
pub const CONNECT_ERRORS: Definition = per_port(counter(
    "portmon_connect_errors_total",
    "Failed connects, by destination port and errno.",
    PORT_ERRNO,
));
pub const SOCKETS: Definition = per_port(gauge(
    "portmon_sockets",
    "Sockets holding a local port, by port and state (as ss shows them).",
    PORT_STATE,
));
pub const LISTENING_PORTS: Definition = per_port(gauge(
    "portmon_listening_ports",
    "Listening ports (TCP LISTEN, UDP bound and unconnected), by port and the reach of the address listened on (scope: wildcard, loopback, specific); a port with many listening sockets (SO_REUSEPORT, one per address) counts once per scope. assignment is IANA's word on the port (assigned, reserved, unassigned, dynamic: 49152-65535), a function of proto and port, so it adds no series. Folded series (port=\"other\") count the distinct ports of their class (assignment empty, \"dynamic\" for that class).",
    PORT_SCOPE_ASSIGNMENT,
));
pub const PORTS_IN_USE: Definition = per_port(gauge(
    "portmon_ports_in_use",
    "Distinct local ports held by any socket, by IANA range class.",
    &["proto", "class", "netns"],
));

pub const EVENTS_DROPPED: Definition = counter(
    "portmon_events_dropped_total",
    "Failure events lost because the ring buffer was full.",
    &[],
);
pub const FAILURE_EVENTS: Definition = counter(
    "portmon_failure_events_total",
    "Failed binds and connects the kernel programs saw: each was sent to portmon or counted in portmon_events_dropped_total.",
    &[],
);
pub const FAILURE_EVENTS_UNDECODABLE: Definition = counter(
    "portmon_failure_events_undecodable_total",
    "Failure events portmon could not read (a kernel program of another version).",
    &[],
);
pub const FAILURE_COUNTS_FOLDED: Definition = counter(
    "portmon_failure_counts_folded_total",
    "Failures counted without their port (or namespace) because the failure counts held as many keys as they may.",
    &[],
);
pub const LOG_LINES_SUPPRESSED: Definition = counter(
    "portmon_log_lines_suppressed_total",
    "Failures not logged one by one because a storm exceeded the log budget (a summary line is logged per interval).",
    &[],
);
pub const HOLDERS_NOT_LOOKED_UP: Definition = counter(
    "portmon_conflict_holders_not_looked_up_total",
    "Binds failed with EADDRINUSE recorded without the process holding the port, as the holder lookups allowed per second were spent.",
    &[],
);
pub const OWNER_WALKS: Definition = counter(
    "portmon_owner_walks_total",
    "Walks of every process's descriptors (/proc/PID/fd) for the owners of sockets the kernel programs did not see made.",
    &[],
);
pub const OWNER_WALKS_CUT_SHORT: Definition = counter(
    "portmon_owner_walks_cut_short_total",
    "Walks for socket owners stopped by their bound on processes, descriptors or time; owners not reached are looked for at the next.",
    &[],
);
pub const THREADS_REFUSED: Definition = counter(
    "portmon_threads_refused_total",
    "Threads the OS refused portmon (the work was done without them, or the namespace was skipped).",
    &[],
);
pub const NETNS_UNWATCHED: Definition = gauge(
    "portmon_netns_unwatched",
    "Network namespaces left out of the inventory because portmon ran short of file descriptors (raise LimitNOFILE).",
    &[],
);
pub const INVENTORY_WALKED: Definition = gauge(
    "portmon_inventory_walked",
    "1 if the last snapshot listed the TCP connections of every namespace sharing the host's established-socket table in one walk of it; 0 if each namespace's dump walked the table (a kernel without BPF iterators, or a walk that failed).",
    &[],
);
pub const INVENTORY_WALK_ERRORS: Definition = counter(
    "portmon_inventory_walk_errors_total",
    "Walks of the established-socket table that failed (a chain changed or ran too long under the walk); that snapshot dumped each namespace instead.",
    &[],
);
pub const NETNS_SCAN_ERRORS: Definition = counter(
    "portmon_netns_scan_errors_total",
    "Scans of the network namespaces the host cut short (out of file descriptors or memory); the namespaces known before were kept.",
    &[],
);
pub const MAP_OVERFLOWS: Definition = counter(
    "portmon_map_overflows_total",
    "Updates lost because a kernel map was full.",
    &["map"],
);
pub const USER_QUOTA_REFUSALS: Definition = counter(
    "portmon_user_quota_refusals_total",
    "Kernel map entries refused to an unprivileged user because it held max-shared-percent-per-user of them already: its namespaces' tables, blocks and pools, whose counts are in portmon_map_overflows_total (tables, pools) or portmon_port_overflow_total (blocks), and its processes' slots of SOCKETS, whose sockets go unfollowed (portmon_map_overflows_total{map=\"SOCKETS\"}).",
    &[],
);
pub const PORT_OVERFLOW: Definition = counter(
    "portmon_port_overflow_total",
    "Binds, listens and connects of a namespace's ports that found no counter block of their own (over max-port-blocks-per-namespace, or port-stats-capacity used up): counted in their range class (port=\"other\") instead, so totals stay exact.",
    &["netns", "proto", "family", "class"],
);
pub const MAP_ENTRIES: Definition = gauge("portmon_map_entries", "Entries in a kernel map.", &["map"]);
pub const MAP_CAPACITY: Definition = gauge("portmon_map_capacity", "Capacity of a kernel map.", &["map"]);
pub const PROGRAM_ATTACHED: Definition = gauge(
    "portmon_program_attached",
    "Whether a kernel program runs at its hook now (1) or not (0), asked of the kernel at each scrape: a cgroup link detached from outside (bpftool link detach) reads 0.",
    &["program"],
);
pub const PROGRAM_RUNS: Definition = counter(
    "portmon_bpf_program_runs_total",
    "Runs of a kernel program, as the kernel counts them while kernel.bpf_stats_enabled is 1 (no series while it is 0).",
    &["program"],
);
pub const PROGRAM_RUN_SECONDS: Definition = counter(
    "portmon_bpf_program_run_seconds_total",
    "Time spent in a kernel program, as the kernel counts it while kernel.bpf_stats_enabled is 1 (no series while it is 0).",
    &["program"],
);
pub const PROGRAM_RECURSION_MISSES: Definition = counter(
    "portmon_bpf_program_recursion_misses_total",
    "Runs of a kernel program the kernel skipped because another tracing program was running on the CPU (Linux 5.12 and later); whatever those runs would have counted is lost.",
    &["program"],
);
pub const REGISTRY_ENTRIES: Definition = gauge(
    "portmon_registry_entries",
    "Records in the port registry portmon loaded, by source format.",
    &["source"],
);
pub const INVENTORY_ERRORS: Definition = counter(
    "portmon_inventory_errors_total",
    "sock_diag dumps that failed after every retry (their sockets were missing from that scrape), by the protocol and family they were to cover.",
    &["proto", "family"],
);
pub const PORT_SERIES_FOLDED: Definition = gauge(
    "portmon_port_series_folded",
    "Ports folded into their range class because the per-port series limit was reached.",
    &[],
);
pub const PORT_SERIES_LIMIT: Definition = gauge(
    "portmon_port_series_limit",
    "The per-port series limit (port-series-limit).",
    &[],
);
pub const SCRAPE_DURATION: Definition = gauge(
    "portmon_scrape_duration_seconds",
    "Time taken to gather this scrape (kernel maps and inventory).",
    &[],
);
pub const SNAPSHOTS: Definition = counter(
    "portmon_snapshots_total",
    "Socket inventories taken (sock_diag dumps of every namespace); requests that arrive while one is taken share it.",
    &[],
);
pub const BUILD_INFO: Definition = gauge(
    "portmon_build_info",
    "portmon's version, the git revision it was built from (\"unknown\" outside a git checkout) and the compiler's version, as labels; the value is always 1.",
    &["version", "revision", "rustc_version"],
);
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: Definition = gauge(
    "portmon_config_last_reload_successful",
    "Whether the last configuration load (at start or on SIGHUP) was applied (1) or refused, the running configuration kept (0).",
    &[],
);
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: Definition = gauge(
    "portmon_config_last_reload_success_timestamp_seconds",
    "When a configuration was last applied, at start or on SIGHUP, in seconds since the Unix epoch.",
    &[],
);

pub const EPHEMERAL_POOL_PORTS: Definition = gauge(
    "portmon_ephemeral_pool_ports",
    "Ports the kernel may hand out as ephemeral ports: ip_local_port_range minus ip_local_reserved_ports.",
    &["netns"],
);
pub const EPHEMERAL_PORTS_IN_USE: Definition = gauge(
    "portmon_ephemeral_ports_in_use",
    "Distinct ports of the ephemeral pool held by any socket, TIME_WAIT included: what bind(0) and UDP auto-bind compete for.",
    &["netns", "proto"],
);
pub const EPHEMERAL_BOUND_PORTS: Definition = gauge(
    "portmon_ephemeral_bound_ports",
    "Ports of the ephemeral pool held by bound sockets (bind, listen; for UDP every socket): out of reach of every connect().",
    &["netns", "proto"],
);
pub const EPHEMERAL_UTILIZATION: Definition = gauge(
    "portmon_ephemeral_utilization_ratio",
    "How full the ephemeral pool is by the kernel's rules: op=bind, ports in use over the pool; op=connect, the busiest destination's connections over the pool minus bound ports. 1 means the next such operation fails.",
    &["netns", "op", "proto"],
);
pub const EPHEMERAL_DESTINATION_UTILIZATION: Definition = gauge(
    "portmon_ephemeral_destination_utilization_ratio",
    "Connections to one destination over what connect() has left for it (the ephemeral pool minus bound ports), for the busiest destinations only (ephemeral-destinations).",
    &["netns", "proto", "remote_addr", "remote_port"],
);
pub const EPHEMERAL_EXHAUSTION_ERRORS: Definition = counter(
    "portmon_ephemeral_exhaustion_errors_total",
    "Operations that failed for want of an ephemeral port: TCP connect (EADDRNOTAVAIL), UDP connect (EAGAIN), bind to port 0 (EADDRINUSE), and under op=bind a UDP sendto()/sendmsg() from a socket without a port (EAGAIN; Linux 6.3+). The process is in the log and in /api/v1/failures.",
    &["netns", "op", "proto"],
);
pub const EPHEMERAL_PORTS_ASSIGNED: Definition = counter(
    "portmon_ephemeral_ports_assigned_total",
    "Ports the kernel handed out from the ephemeral pool, by how: op=bind, bind() to port 0; op=connect, a TCP connection established from a socket without a port; op=autobind, a UDP socket given a port by connect(), sendto() or sendmsg() (counted when it connects, or at the latest when it closes). Such ports have no per-port series.",
    &["netns", "proto", "family", "op"],
);
pub const CONNECT_PORT_SEARCH: Definition = histogram(
    "portmon_connect_port_search_seconds",
    "How long TCP connects spent finding a local port (from SYN_SENT to tcp_connect(): the kernel's walk of the ephemeral range, plus a route lookup), searches that found none included. It grows as the pool fills, before any connect fails. Only with connect-search = true.",
    &["netns"],
);
pub const EPHEMERAL_ASSESSMENT: Definition = gauge(
    "portmon_ephemeral_assessment_seconds",
    "Time this scrape spent assessing the ephemeral pools (part of portmon_scrape_duration_seconds).",
    &[],
);
pub const BIND_BEFORE_CONNECT: Definition = counter(
    "portmon_bind_before_connect_total",
    "TCP connects from sockets bound to port 0 first (without IP_BIND_ADDRESS_NO_PORT), which hold their port exclusively, by command name.",
    &["comm"],
);
pub const LISTENERS_IN_EPHEMERAL_RANGE: Definition = gauge(
    "portmon_listeners_in_ephemeral_range",
    "Ports listened on (TCP LISTEN, UDP bound and unconnected) inside their namespace's ephemeral pool: ip_local_port_range and not ip_local_reserved_ports. Any outbound connect may take such a port while its service is down, and the service then cannot bind it again.",
    &["netns", "proto"],
);
pub const LISTENER_IN_EPHEMERAL_RANGE_INFO: Definition = gauge(
    "portmon_listener_in_ephemeral_range_info",
    "One series per port of portmon_listeners_in_ephemeral_range (the first 100, by namespace, protocol and port), with the command and systemd unit listening where portmon knows them (empty otherwise). The value is always 1.",
    &["netns", "proto", "port", "comm", "unit"],
);
pub const NETNS_INFO: Definition = gauge(
    "portmon_netns_info",
    "A live network namespace and what runs in it, from the cgroup of its first process (Kubernetes pod UID, container id and runtime, systemd unit) and the runtime's state (pod name and namespace); empty when unknown. The value is always 1: join on netns, or on pod_uid with kube_pod_info{uid}.",
    &["netns", "pod_uid", "pod", "namespace", "container_id", "runtime", "unit"],
);

/// Every family, in no particular order (the exposition sorts by name).
pub const ALL: &[Definition] = &[
    BINDS,
    CONNECTS,
    BIND_ERRORS,
    CONNECT_ERRORS,
    SOCKETS,
    LISTENING_PORTS,
    PORTS_IN_USE,
    EVENTS_DROPPED,
    FAILURE_EVENTS,
    FAILURE_EVENTS_UNDECODABLE,
    FAILURE_COUNTS_FOLDED,
    LOG_LINES_SUPPRESSED,
    HOLDERS_NOT_LOOKED_UP,
    OWNER_WALKS,
    OWNER_WALKS_CUT_SHORT,
    THREADS_REFUSED,
    NETNS_UNWATCHED,
    NETNS_SCAN_ERRORS,
    INVENTORY_WALKED,
    INVENTORY_WALK_ERRORS,
    MAP_OVERFLOWS,
    USER_QUOTA_REFUSALS,
    PORT_OVERFLOW,
    MAP_ENTRIES,
    MAP_CAPACITY,
    PROGRAM_ATTACHED,
    PROGRAM_RUNS,
    PROGRAM_RUN_SECONDS,
    PROGRAM_RECURSION_MISSES,
    REGISTRY_ENTRIES,
    INVENTORY_ERRORS,
    PORT_SERIES_FOLDED,
    PORT_SERIES_LIMIT,
    SCRAPE_DURATION,
    SNAPSHOTS,
    BUILD_INFO,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
    EPHEMERAL_POOL_PORTS,
    EPHEMERAL_PORTS_IN_USE,
    EPHEMERAL_BOUND_PORTS,
    EPHEMERAL_UTILIZATION,
    EPHEMERAL_DESTINATION_UTILIZATION,
    EPHEMERAL_EXHAUSTION_ERRORS,
    EPHEMERAL_PORTS_ASSIGNED,
    EPHEMERAL_ASSESSMENT,
    CONNECT_PORT_SEARCH,
    BIND_BEFORE_CONNECT,
    LISTENERS_IN_EPHEMERAL_RANGE,
    LISTENER_IN_EPHEMERAL_RANGE_INFO,
    NETNS_INFO,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a family is listed twice");
        for d in ALL {
            assert!(d.name.starts_with("portmon_"), "{}", d.name);
            assert_eq!(
                d.kind == MetricType::COUNTER,
                d.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                d.name
            );
            assert!(
                !d.netns_optional || d.labels.contains(&"netns"),
                "{}: an optional netns it does not have",
                d.name
            );
        }
    }

    #[test]
    fn the_optional_netns_goes_only_when_asked() {
        let without: Vec<&str> = SOCKETS.label_names(false).collect();
        assert_eq!(without, ["proto", "family", "port", "class", "service", "state"]);
        assert_eq!(SOCKETS.label_names(true).count(), SOCKETS.labels.len());
        let pools: Vec<&str> = EPHEMERAL_POOL_PORTS.label_names(false).collect();
        assert_eq!(pools, ["netns"], "a pool's namespace is never optional");
    }
}
