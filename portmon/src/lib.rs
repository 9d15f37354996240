//! portmon: live port monitoring for Linux through eBPF.
//!
//! The layout follows the data: `loader` owns the kernel programs,
//! `counters` and `failures` read what they collect, `registry` and
//! `port_class` say what a port means, `daemon` runs it all, `cli` is the
//! command line.

pub mod api;
pub mod btf;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod ephemeral;
pub mod exporter;
pub mod failures;
pub mod fnv;
pub mod http;
pub mod inventory;
pub mod loader;
pub mod map_batch;
pub mod mapped_array;
pub mod mounts;
pub mod netns;
pub mod port_class;
pub mod port_set;
pub mod preflight;
pub mod registry;
pub mod service;
pub mod socket_table;
