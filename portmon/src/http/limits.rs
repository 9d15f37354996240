//! How much a client may take of the server: connections, head size and
//! time. Each default bounds what a hostile client on the node's network
//! can hold, while a real Prometheus or `curl` never comes near it.

use std::time::Duration;

/// The server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; past it new ones wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_head_bytes: usize,
    /// How long a connection may wait for a byte from the client (a request
    /// head, the next request on a kept-alive connection, a TLS handshake)
    /// while nothing moves the other way either.
    pub read_timeout: Duration,
    /// How long a write may wait for the client to take bytes: a reader that
    /// stops reading is dropped after it, with its response.
    pub write_timeout: Duration,
    /// Most bytes of answers held for clients still reading them; past it
    /// the connections that have held theirs longest are closed.
    pub held_response_bytes: usize,
}

/// hyper's smallest read buffer: a head limit below it cannot be kept.
pub const MIN_HEAD_BYTES: usize = 8 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A connection that has sent nothing costs a task and a
            // descriptor; one being read, hyper's 8 KiB buffer: 4,096 stay
            // within the daemon's memory bound and descriptor limit (raised
            // to the hard limit at start).
            max_connections: 4096,
            // Browsers and Prometheus send well under 2 KiB.
            max_head_bytes: 16 * 1024,
            // Prometheus' default scrape timeout.
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            // A couple of answers of a large host's API; scrapes read theirs at once.
            held_response_bytes: 8 << 20,
        }
    }
}
