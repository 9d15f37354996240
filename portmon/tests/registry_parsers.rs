//! Property tests: both registry parsers and the /proc parsers return an
//! answer or an error for any input, and never panic.

use std::path::Path;

use portmon::{
    exhaustion::{LocalPortRange, ReservedPorts},
    registry::{Registry, Transport},
};
use proptest::prelude::*;

const IANA_HEADER: &str = "Service Name,Port Number,Transport Protocol,Description,Assignee,Contact,\
Registration Date,Modification Date,Reference,Service Code,Unauthorized Use Reported,Assignment Notes\r\n";

const IANA_LINES: &[&str] = &[
    ",0,tcp,Reserved,[Jon_Postel],[Jon_Postel],,,,,,\r\n",
    "ssh,22,tcp,The Secure Shell (SSH) Protocol,,,,,[RFC4251],,,\r\n",
    "whoispp,63,tcp,\"whois++ replacement for \"\"whois++\"\".\",,,,,,,,\r\n",
    "www-http,80,tcp,World Wide Web HTTP,,,,,,,,\"duplicate of \"\"http\"\".\nsecond line\"\r\n",
    ",272-279,,Unassigned,,,,,,,,\r\n",
    "x11,6000-6063,udp,X Window System,,,,,,,,\r\n",
    "7ksonar,,sctp,Teledyne Marine 7k Sonar Protocol,,,,,,,,\r\n",
    "discard,9,dccp,Discard,,,,,[RFC4340],1145656131,,\r\n",
];

const SERVICES_LINES: &[&str] = &[
    "# Network services, Internet style\n",
    "\n",
    "ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol\n",
    "http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP\n",
    "kerberos\t88/udp\t\tkerberos5 krb5 kerberos-sec\n",
    "rtmp\t\t1/ddp\t\t\t# Routing Table Maintenance Protocol\n",
];

/// Checks what every registry must satisfy, whatever it holds.
fn check(registry: &Registry) {
    assert_eq!(registry.entries().len(), registry.source().entries);
    for transport in Transport::ALL {
        for port in [0, 22, 80, 6000, 65535] {
            let primary = registry.service_name(port, transport);
            let first = registry.by_port(port, transport).find_map(|e| e.name);
            assert_eq!(primary, first);
        }
    }
    for entry in registry.entries().take(50) {
        if let Some(name) = entry.name {
            assert!(registry.by_name(name).any(|e| e == entry));
        }
    }
}

/// Valid lines with some bytes replaced, inserted or removed.
fn mutated(lines: &'static [&'static str], prefix: &'static str) -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 0..8);
    (prop::collection::vec(prop::sample::select(lines), 0..12), edits).prop_map(move |(lines, edits)| {
        let mut text: Vec<char> = format!("{prefix}{}", lines.concat()).chars().collect();
        for (at, op, c) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            match op {
                0 => text[i] = c,
                1 => text.insert(i, c),
                _ => {
                    text.remove(i);
                }
            }
        }
        text.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        if let Ok(registry) = Registry::parse(&text, Path::new("fuzz")) {
            check(&registry);
        }
    }

    #[test]
    fn arbitrary_csv_body_never_panics(body in "[a-z0-9,\"\r\n -]{0,400}") {
        if let Ok(registry) = Registry::parse(&format!("{IANA_HEADER}{body}"), Path::new("fuzz")) {
            check(&registry);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Registry::parse(&text, Path::new("fuzz"));
        let _ = Registry::parse(&format!("{IANA_HEADER}{text}"), Path::new("fuzz"));
        let _ = text.parse::<LocalPortRange>();
        let _ = text.parse::<ReservedPorts>();
    }

    #[test]
    fn mutated_iana_lines_never_panic(text in mutated(IANA_LINES, IANA_HEADER)) {
        if let Ok(registry) = Registry::parse(&text, Path::new("fuzz")) {
            check(&registry);
        }
    }

    #[test]
    fn mutated_services_lines_never_panic(text in mutated(SERVICES_LINES, "")) {
        if let Ok(registry) = Registry::parse(&text, Path::new("fuzz")) {
            check(&registry);
        }
    }

    #[test]
    fn valid_lines_always_parse(
        iana in prop::collection::vec(prop::sample::select(IANA_LINES), 0..20),
        services in prop::collection::vec(prop::sample::select(SERVICES_LINES), 0..20),
    ) {
        let registry = Registry::parse(&format!("{IANA_HEADER}{}", iana.concat()), Path::new("iana"));
        prop_assert_eq!(registry.map(|r| r.len()), Ok(iana.len()));
        let known = services.iter().filter(|l| l.contains("/tcp") || l.contains("/udp")).count();
        let registry = Registry::parse(&services.concat(), Path::new("services"));
        prop_assert_eq!(registry.map(|r| r.len()), Ok(known));
    }

    #[test]
    fn reserved_ports_round_trip(ranges in prop::collection::vec((any::<u16>(), 0u16..300), 0..10)) {
        let text: Vec<String> = ranges
            .iter()
            .map(|&(low, len)| format!("{low}-{}", low.saturating_add(len)))
            .collect();
        let reserved: ReservedPorts = text.join(",").parse().unwrap();
        let printed: ReservedPorts = reserved.to_string().parse().unwrap();
        prop_assert_eq!(printed, reserved);
    }
}
