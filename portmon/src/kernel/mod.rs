//! The kernel-facing layer: everything that talks to the kernel, and the
//! only place in user space with `unsafe` code.
//!
//! - [`bpf`]: the kernel programs and their maps — loading and attaching
//!   them, struct offsets from the kernel's BTF, the counters, the socket
//!   table and the failure events they fill.
//! - [`sock_diag`]: `NETLINK_SOCK_DIAG` dumps of a namespace's sockets
//!   (what `ss` reads).
//! - [`netns`]: entering a network namespace, and its cookie.
//! - [`netns_opener`]: the namespace helper, which holds the privilege to
//!   enter namespaces so that the daemon holds none.
//! - [`procfs`]: the one reader of procfs and sysctl files.
//! - [`socket_owners`]: which process holds a socket, from `/proc/PID/fd`.
//! - [`threads`]: threads for a piece of work, a refusal counted.
//! - [`mounts`], [`preflight`], [`features`], [`capabilities`], [`clock`]:
//!   where the kernel's file systems are, whether portmon can run here and
//!   what it will miss, the privileges it holds, and the clock systemd
//!   reads.
//!
//! Above this layer the code is safe Rust over plain data.

pub mod bpf;
pub mod capabilities;
pub mod clock;
pub mod features;
pub mod mounts;
pub mod netns;
pub mod netns_opener;
pub mod preflight;
pub mod procfs;
pub mod resources;
pub mod sock_diag;
pub mod socket_owners;
pub mod threads;
