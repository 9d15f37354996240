//! Ephemeral-port exhaustion, by the kernel's own rules (Linux 6.x): the
//! one home of the pool — its sysctls ([`pool`]), how full it is against
//! the sockets ([`assess`]), and which failures say it ran out
//! ([`exhausted`]).
//!
//! The pool of one network namespace is `ip_local_port_range` minus
//! `ip_local_reserved_ports`. Two kinds of operations draw on it, with
//! different limits:
//!
//! - **Exclusive**: `bind()` to port 0, `listen()` without `bind()`,
//!   bind-before-connect, and UDP auto-bind take a port no socket of any
//!   kind holds (`inet_csk_find_open_port` in net/ipv4/inet_connection_sock.c,
//!   `udp_lib_get_port` in net/ipv4/udp.c). Their limit is the pool minus
//!   every port in use, TIME_WAIT included: `op="bind"`.
//! - **Shared**: `connect()` on an unbound TCP socket needs only a unique
//!   4-tuple, so one local port serves many destinations
//!   (`__inet_hash_connect` in net/ipv4/inet_hashtables.c). It skips every
//!   port whose bind bucket was made by `bind()` (`tb->fastreuse >= 0`), so
//!   its limit per (local address, remote address, remote port) is the pool
//!   minus the ports held by bound sockets: `op="connect"`.
//!
//! A TIME_WAIT socket keeps its 4-tuple until it expires, unless
//! `tcp_tw_reuse` lets `connect()` take it over (`tcp_twsk_unique` in
//! net/ipv4/tcp_ipv4.c: `1` always, `2` when either end is a loopback
//! address). The kernel also wants the TIME_WAIT socket to be older than a
//! second and to have seen TCP timestamps; portmon counts every such socket
//! as reusable, erring on the side of the pool having room.
//!
//! When the pool runs out, TCP `connect()` fails with EADDRNOTAVAIL, UDP
//! `connect()` with EAGAIN (`inet_autobind` in `inet_dgram_connect`,
//! net/ipv4/af_inet.c), and `bind()` to port 0 with EADDRINUSE
//! (`inet_csk_get_port`). The integration tests check each on the running
//! kernel.

use portmon_common::{Errno, Op, Proto};

pub mod assess;
pub mod listeners;
pub mod pool;

pub use assess::{
    assess, DestinationUsage, EphemeralReport, PoolUsage, ReservedPortsFix, DEFAULT_TOP_DESTINATIONS,
};
pub use listeners::{ListenerInPool, ListenerOwner};
pub use pool::{EphemeralPool, LocalPortRange, PoolError, PoolSettings, PoolSysctls, ReservedPorts, TwReuse};

/// Which pool a failure says ran out, if it says one did: a TCP connect
/// with EADDRNOTAVAIL, a UDP connect with EAGAIN, a bind to port 0 with
/// EADDRINUSE, a UDP send from a socket without a port with EAGAIN. The
/// last is an auto-bind like bind(0)'s, which `op="bind"`'s ratio measures.
pub fn exhausted(op: Op, proto: Proto, errno: Errno, port: u16) -> Option<Op> {
    match (op, proto, errno) {
        (Op::Connect, Proto::Tcp, Errno::AddrNotAvail) | (Op::Connect, Proto::Udp, Errno::Again) => {
            Some(Op::Connect)
        }
        (Op::Bind, _, Errno::AddrInUse) if port == 0 => Some(Op::Bind),
        (Op::Send, Proto::Udp, Errno::Again) => Some(Op::Bind),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_are_exhaustion() {
        assert_eq!(
            exhausted(Op::Connect, Proto::Tcp, Errno::AddrNotAvail, 80),
            Some(Op::Connect)
        );
        assert_eq!(
            exhausted(Op::Connect, Proto::Udp, Errno::Again, 53),
            Some(Op::Connect)
        );
        assert_eq!(
            exhausted(Op::Bind, Proto::Tcp, Errno::AddrInUse, 0),
            Some(Op::Bind)
        );
        assert_eq!(
            exhausted(Op::Bind, Proto::Tcp, Errno::AddrInUse, 8080),
            None,
            "a conflict"
        );
        assert_eq!(exhausted(Op::Bind, Proto::Tcp, Errno::AddrNotAvail, 0), None);
        assert_eq!(exhausted(Op::Send, Proto::Udp, Errno::Again, 0), Some(Op::Bind));
    }
}
