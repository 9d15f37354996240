//! The kernel programs (`portmon-ebpf`) and their maps.
//!
//! [`loader`] is the only owner of the BPF object: it loads and attaches
//! the programs and hands out [`KernelMaps`], the bundle the readers use,
//! and [`FailureEvents`], the ring buffer failures arrive on. The readers
//! below it map arrays into memory ([`mapped_array`]) or read whole hash
//! maps in batches ([`map_batch`]).

pub mod attached;
pub mod btf;
pub mod connect_search;
pub mod counters;
pub mod events;
mod fdinfo;
pub mod loader;
pub mod map_batch;
pub mod mapped_array;
pub mod maps;
pub mod pools;
pub mod program_stats;
pub mod programs;
pub mod reclaim;
pub mod reserve;
pub mod socket_table;
pub mod walk;

pub use events::FailureEvents;
pub use loader::{Kernel, LoadError, LoadOptions};
pub use maps::{KernelMaps, MapUsage};
pub use programs::PROGRAMS;
