//! portmon: live port monitoring for Linux through eBPF.
//!
//! # Two worlds of sockets
//!
//! portmon joins two views of the host's sockets by socket cookie, the
//! number both the kernel programs and `sock_diag` report:
//!
//! - **The kernel programs' table** (`kernel::bpf`): the sockets portmon saw
//!   bind or listen while it ran (TCP clients take no slot), with their
//!   owner (pid, command, cgroup) and the ports they hold, in memory-mapped
//!   arrays; counters per (namespace, protocol, family, port, kind) for the
//!   ports programs chose, and per (namespace, protocol, family, way) for
//!   those the kernel chose, counted in the kernel.
//! - **The inventory** (`inventory`, through `kernel::sock_diag`): every
//!   TCP and UDP socket of every namespace, as `ss` sees it, taken fresh at
//!   each scrape — sockets older than portmon and TIME_WAIT ones included.
//!
//! A socket of the inventory the kernel programs did not see made has its
//! owner found as `ss -p` finds it, by inode among every process's
//! descriptors (`owners`, through `kernel::socket_owners` and the namespace
//! helper, which holds the privilege to read them).
//!
//! # The path of a number
//!
//! event (a hook in `portmon-ebpf`) → map (`PORT_STATS`, `POOL_COUNTS`,
//! `SOCKETS`, or the `FAILURES` ring buffer for rare failures) → reader
//! (`kernel::bpf`: `counters`, `pools`, `socket_table`, `events`, settled by
//! `failures`; `program_stats` and `attached` ask the kernel itself) → `state`
//! (what every reader shares) → collector (`exporter`, at each scrape, with
//! `inventory`, `exhaustion` and `registry`) → exposition (`/metrics`,
//! served by `http`; the JSON `api` reads the same state).
//!
//! # Layers, bottom up
//!
//! Imports flow downward only:
//!
//! 1. `kernel`: everything that talks to the kernel; the only `unsafe`.
//! 2. `report`, `log_budget`, `port_class`, `port_set`, `address_scope`:
//!    vocabulary; `single_flight`.
//! 3. `registry` (what a port is called), `exhaustion` (the ephemeral pool
//!    by the kernel's rules), `cgroups`, `workload` and `namespaces` (the
//!    names people know: units, containers, pods), `owners` (who holds a
//!    socket the kernel programs did not see made), `settings`.
//! 4. `inventory` (sock_diag snapshots) and `failures` (failed binds and
//!    connects, settled).
//! 5. `state`: the daemon's shared state.
//! 6. `exporter`, `api`, `http`, `config`, `service`: the readers and the
//!    service manager's view.
//! 7. `daemon` (start-up and serving, wiring only) and `cli`; `fuzzing`,
//!    one entry per parser of untrusted input, for the fuzz targets.

pub mod address_scope;
pub mod api;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod exhaustion;
pub mod exporter;
pub mod failures;
pub mod fuzzing;
pub mod http;
pub mod inventory;
pub mod kernel;
pub mod log_budget;
pub mod namespaces;
pub mod owners;
pub mod port_class;
pub mod port_set;
pub mod registry;
pub mod report;
pub mod service;
pub mod settings;
pub mod single_flight;
pub mod state;
pub mod workload;
