//! portmon's integration tests: the real kernel programs, real sockets in
//! fresh network namespaces, exact counts. They need root.

mod churn;
mod cli;
mod connect_search;
mod containers;
mod counting;
mod deploy;
mod descriptors;
mod exhaustion;
mod exporter;
mod failures;
mod hazards;
mod image;
mod lifecycle;
mod namespace_helper;
mod owners;
mod package;
mod pools;
mod ports;
mod service;
mod serving;
mod socket_quota;
mod storm;
mod transparency;
mod unprivileged;
