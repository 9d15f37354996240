//! What a listening address reaches: every interface, this host only, or
//! one address — what security reviews ask of a listener first.

use std::net::IpAddr;

/// The reach of a local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressScope {
    /// `0.0.0.0` or `::`: every address of every interface (for `::`, IPv4
    /// too unless the socket is `IPV6_V6ONLY`).
    Wildcard,
    /// `127.0.0.0/8`, `::1` or `::ffff:127.0.0.0/104`: this host only.
    Loopback,
    /// Any other address: the interfaces that carry it.
    Specific,
}

impl AddressScope {
    /// Every scope, widest first.
    pub const ALL: [AddressScope; 3] = [
        AddressScope::Wildcard,
        AddressScope::Loopback,
        AddressScope::Specific,
    ];

    /// The scope of a local address.
    pub fn of(ip: IpAddr) -> Self {
        // An IPv4-mapped address is reached as the IPv4 address it maps.
        let ip = ip.to_canonical();
        if ip.is_unspecified() {
            AddressScope::Wildcard
        } else if ip.is_loopback() {
            AddressScope::Loopback
        } else {
            AddressScope::Specific
        }
    }

    /// The label used in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            AddressScope::Wildcard => "wildcard",
            AddressScope::Loopback => "loopback",
            AddressScope::Specific => "specific",
        }
    }
}

portmon_common::label_text!(AddressScope);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_of_addresses() {
        let cases = [
            ("0.0.0.0", AddressScope::Wildcard),
            ("::", AddressScope::Wildcard),
            ("127.0.0.1", AddressScope::Loopback),
            ("127.0.0.53", AddressScope::Loopback),
            ("::1", AddressScope::Loopback),
            ("::ffff:127.0.0.1", AddressScope::Loopback),
            ("10.1.2.3", AddressScope::Specific),
            ("::ffff:10.1.2.3", AddressScope::Specific),
            ("fe80::1", AddressScope::Specific),
        ];
        for (ip, want) in cases {
            assert_eq!(AddressScope::of(ip.parse().unwrap()), want, "{ip}");
        }
    }
}
