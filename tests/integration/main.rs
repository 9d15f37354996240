//! portmon's integration tests: the real kernel programs, real sockets in
//! fresh network namespaces, exact counts. They need root.

mod cli;
mod containers;
mod counting;
mod deploy;
mod descriptors;
mod exhaustion;
mod exporter;
mod failures;
mod image;
mod lifecycle;
mod namespace_helper;
mod package;
mod ports;
mod service;
mod storm;
mod transparency;
