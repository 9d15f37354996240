//! What a port number means by itself: its IANA range class (RFC 6335).
//!
//! IANA calls 49152–65535 "dynamic", but Linux's default ephemeral range is
//! 32768–60999, which covers half of the IANA user range and leaves the top
//! of the dynamic range alone: the kernel's view of a namespace is
//! `exhaustion::EphemeralPool`.

/// IANA's range class of a port (RFC 6335 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortClass {
    /// 0–1023, the "well-known" ports, assigned by IETF review.
    System,
    /// 1024–49151, the "registered" ports, assigned by IANA.
    User,
    /// 49152–65535, never assigned: dynamic and/or private use.
    Dynamic,
}

impl PortClass {
    /// Every class, lowest ports first.
    pub const ALL: [PortClass; 3] = [PortClass::System, PortClass::User, PortClass::Dynamic];

    /// The class `port` belongs to.
    pub const fn of(port: u16) -> Self {
        match port {
            0..=1023 => PortClass::System,
            1024..=49151 => PortClass::User,
            _ => PortClass::Dynamic,
        }
    }

    /// The label used in metrics, the CLI and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            PortClass::System => "system",
            PortClass::User => "user",
            PortClass::Dynamic => "dynamic",
        }
    }

    /// The lowest and highest port of the class.
    pub const fn bounds(self) -> (u16, u16) {
        match self {
            PortClass::System => (0, 1023),
            PortClass::User => (1024, 49151),
            PortClass::Dynamic => (49152, 65535),
        }
    }
}

portmon_common::label_text!(PortClass);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_of_boundaries() {
        let cases = [
            (0, PortClass::System),
            (1023, PortClass::System),
            (1024, PortClass::User),
            (32768, PortClass::User),
            (49151, PortClass::User),
            (49152, PortClass::Dynamic),
            (65535, PortClass::Dynamic),
        ];
        for (port, class) in cases {
            assert_eq!(PortClass::of(port), class, "port {port}");
        }
        for class in PortClass::ALL {
            let (low, high) = class.bounds();
            assert_eq!((PortClass::of(low), PortClass::of(high)), (class, class));
        }
        let labels: Vec<_> = PortClass::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["system", "user", "dynamic"]);
    }
}
