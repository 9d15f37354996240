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
}

/// hyper's smallest read buffer: a head limit below it cannot be kept.
pub const MIN_HEAD_BYTES: usize = 8 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            // An idle connection costs hyper's 8 KiB read buffer and a task:
            // 4,096 of them stay within tens of MiB, and the daemon's
            // descriptor limit (raised to the hard limit at start) has room.
            max_connections: 4096,
            // Browsers and Prometheus send well under 2 KiB.
            max_head_bytes: 16 * 1024,
            // Prometheus' default scrape timeout.
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}
