//! portmon's integration tests: the real kernel programs, real sockets in
//! fresh network namespaces, exact counts. They need root.

mod counting;
mod deploy;
mod exhaustion;
mod exporter;
mod failures;
mod lifecycle;
mod package;
mod ports;
mod service;
mod serving;
mod transparency;
