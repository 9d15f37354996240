//! User-space view of the shared types: `aya::Pod` and typed conversions.

use crate::{
    assigned, errno, family, kind, op, proto, FailureEvent, KernelLayout, PoolKey, PortBlock, PortTable,
    PortTableKey, SearchHistogram, SockSlot, SocketGroup,
};

// SAFETY: each type is `#[repr(C)]`, made of integers and byte arrays, with
// explicit padding fields, so every bit pattern is a valid value.
unsafe impl aya::Pod for PortTableKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PortTable {}
// SAFETY: as above.
unsafe impl aya::Pod for PortBlock {}
// SAFETY: as above.
unsafe impl aya::Pod for SockSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for FailureEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for KernelLayout {}
// SAFETY: as above: `#[repr(C)]` integers with explicit padding.
unsafe impl aya::Pod for crate::walk::WalkLayout {}
// SAFETY: as above.
unsafe impl aya::Pod for SocketGroup {}
// SAFETY: as above.
unsafe impl aya::Pod for PoolKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::OwnerHeld {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::OwnerQuota {}
// SAFETY: as above.
unsafe impl aya::Pod for SearchHistogram {}

/// One port's counters, gathered from `PORT_STATS` blocks and the socket
/// table. Counters only grow; `live` goes up and down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Successful `bind()`s that ended on this port (local role).
    pub binds: u64,
    /// Successful `listen()`s on this port (local role).
    pub listens: u64,
    /// Established outbound connections to this destination port (remote
    /// role), TCP and UDP.
    pub connects: u64,
    /// Sockets portmon follows that hold this port now: bound or listening
    /// (local role), or connected to it from a bound socket (remote role).
    pub live: i64,
}

/// Who bound, listened on or connected a socket portmon follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Network namespace cookie.
    pub netns: u64,
    /// cgroup v2 id.
    pub cgroup: u64,
    /// Command name, NUL padded.
    pub comm: [u8; 16],
    /// Process id (tgid).
    pub pid: u32,
}

impl SockSlot {
    /// The process that made the socket, if the kernel side recorded one.
    pub fn owner(&self) -> Option<Owner> {
        (self.pid != 0).then_some(Owner {
            netns: self.netns,
            cgroup: self.cgroup,
            comm: self.comm,
            pid: self.pid,
        })
    }
}

impl Role {
    /// Which end of a connection the ports of a block of this `kind::*` are.
    pub fn of_kind(kind: u8) -> Result<Self, UnknownValue> {
        match kind {
            kind::BINDS | kind::LISTENS => Ok(Role::Local),
            kind::CONNECTS_TO => Ok(Role::Remote),
            value => Err(UnknownValue {
                kind: "counter kind",
                value,
            }),
        }
    }
}

/// A value from the kernel that does not name a known variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value} from the kernel")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: u8,
}

macro_rules! kernel_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, { $($(#[$vmeta:meta])* $variant:ident = $raw:path => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant, in label order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label used in metrics, the CLI and JSON.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            /// The raw value the kernel side uses.
            pub const fn raw(self) -> u8 {
                match self { $($name::$variant => $raw),+ }
            }
        }

        impl TryFrom<u8> for $name {
            type Error = UnknownValue;
            fn try_from(value: u8) -> Result<Self, Self::Error> {
                match value {
                    $($raw => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, value }),
                }
            }
        }

        $crate::label_text!($name);
    };
}

/// `Display` and `Serialize` for a type with a `label(self) -> &'static str`:
/// the same word in logs, metrics, the CLI and JSON.
#[macro_export]
macro_rules! label_text {
    ($name:ty) => {
        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.label())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.label())
            }
        }
    };
}

kernel_enum!(
    /// Transport protocol.
    Proto, "protocol", { Tcp = proto::TCP => "tcp", Udp = proto::UDP => "udp" }
);
kernel_enum!(
    /// Address family.
    Family, "address family", { Inet = family::INET => "ipv4", Inet6 = family::INET6 => "ipv6" }
);
/// Raw values of `Role`, which the kernel side does not use: it counts by
/// `kind::*`, and a kind belongs to one end.
mod role {
    pub const LOCAL: u8 = 0;
    pub const REMOTE: u8 = 1;
}
kernel_enum!(
    /// Which end of a connection a port is: one this host holds (bound,
    /// listening, the ephemeral port of a connect) or a destination.
    Role, "role", { Local = role::LOCAL => "local", Remote = role::REMOTE => "remote" }
);
kernel_enum!(
    /// How the kernel handed out a port from the ephemeral pool.
    Assignment, "way of assigning a port", {
        /// bind() to port 0.
        Bind = assigned::BIND => "bind",
        /// A TCP connect from a socket without a port.
        Connect = assigned::CONNECT => "connect",
        /// A UDP socket used without a port: connect(), sendto(), sendmsg().
        Autobind = assigned::AUTOBIND => "autobind",
    }
);
kernel_enum!(
    /// The operation a failure belongs to.
    Op, "operation", { Bind = op::BIND => "bind", Connect = op::CONNECT => "connect", Send = op::SEND => "send" }
);

/// The errno of a failed bind or connect, as far as portmon can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Errno {
    /// A port conflict, or no free port for an exclusive bind.
    AddrInUse,
    /// No local port left for a TCP connect, or a non-local address.
    AddrNotAvail,
    /// A privileged port without CAP_NET_BIND_SERVICE.
    Access,
    /// No local port left for a UDP connect's auto-bind.
    Again,
}

impl Errno {
    /// Every errno, in label order.
    pub const ALL: &'static [Errno] = &[Errno::Access, Errno::AddrInUse, Errno::AddrNotAvail, Errno::Again];

    /// The C name, used as a metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Errno::AddrInUse => "EADDRINUSE",
            Errno::AddrNotAvail => "EADDRNOTAVAIL",
            Errno::Access => "EACCES",
            Errno::Again => "EAGAIN",
        }
    }

    /// The errno the kernel side recorded, if it named one (`errno::*`).
    pub const fn from_kernel(raw: u32) -> Option<Self> {
        match raw {
            errno::EADDRINUSE => Some(Errno::AddrInUse),
            errno::EADDRNOTAVAIL => Some(Errno::AddrNotAvail),
            errno::EACCES => Some(Errno::Access),
            errno::EAGAIN => Some(Errno::Again),
            _ => None,
        }
    }
}

label_text!(Errno);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SEARCH_BUCKETS, SEARCH_FIRST_BOUND_NS};

    #[test]
    fn a_search_falls_in_the_first_bucket_whose_bound_holds_it() {
        let last = SEARCH_BUCKETS - 1;
        let cases = [
            (0, 0),
            (1, 0),
            (SEARCH_FIRST_BOUND_NS, 0),
            (SEARCH_FIRST_BOUND_NS + 1, 1),
            (SEARCH_FIRST_BOUND_NS * 2, 1),
            (SEARCH_FIRST_BOUND_NS * 2 + 1, 2),
            (1_000_000, 12),
            (SEARCH_FIRST_BOUND_NS << (last - 1), last - 1),
            ((SEARCH_FIRST_BOUND_NS << (last - 1)) + 1, last),
            (u64::MAX, last),
        ];
        for (ns, bucket) in cases {
            assert_eq!(SearchHistogram::bucket(ns), bucket, "{ns} ns");
        }
    }

    #[test]
    fn the_host_has_twelve_fixed_entries_and_ports_three_classes() {
        // Each of 1..=12 exactly once (no_std: a bit per entry).
        let mut seen = 0u32;
        for p in [crate::proto::TCP, crate::proto::UDP] {
            for f in [crate::family::INET, crate::family::INET6] {
                for w in 0..3 {
                    let entry = crate::host_entry(p, f, w).expect("an entry");
                    assert_eq!(seen & (1 << entry), 0, "entry {entry} twice");
                    seen |= 1 << entry;
                }
            }
        }
        assert_eq!(seen, ((1 << (crate::capacity::HOST_ENTRIES + 1)) - 1) & !1);
        assert_eq!(crate::host_entry(crate::proto::TCP, crate::family::INET, 3), None);
        assert_eq!(crate::host_entry(1, crate::family::INET, 0), None);
        let classes = [(0, 0), (1023, 0), (1024, 1), (49151, 1), (49152, 2), (65535, 2)];
        for (port, class) in classes {
            assert_eq!(crate::range_class::of(port), class, "port {port}");
        }
    }

    #[test]
    fn raw_values_round_trip() {
        for p in Proto::ALL {
            assert_eq!(Proto::try_from(p.raw()), Ok(*p));
        }
        for f in Family::ALL {
            assert_eq!(Family::try_from(f.raw()), Ok(*f));
        }
        assert_eq!(
            Proto::try_from(132),
            Err(UnknownValue {
                kind: "protocol",
                value: 132
            })
        );
    }
}
