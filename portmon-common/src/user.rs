//! User-space view of the shared types: `aya::Pod` and typed conversions.

use core::fmt;

use crate::{family, op, proto, role, FailureEvent, Owner, PortKey, PortStats, SockState};

// SAFETY: each type is `#[repr(C)]`, made of integers and byte arrays, with
// explicit padding fields, so every bit pattern is a valid value.
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PortStats {}
// SAFETY: as above.
unsafe impl aya::Pod for Owner {}
// SAFETY: as above.
unsafe impl aya::Pod for FailureEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for SockState {}

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

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.label())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.label())
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
kernel_enum!(
    /// Which end of a connection a port is.
    Role, "role", { Local = role::LOCAL => "local", Remote = role::REMOTE => "remote" }
);
kernel_enum!(
    /// The operation a failure belongs to.
    Op, "operation", { Bind = op::BIND => "bind", Connect = op::CONNECT => "connect" }
);

#[cfg(test)]
mod tests {
    use super::*;

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
