//! The full IANA registry (shared reference data, never copied into the
//! repository) parses whole and answers the well-known facts.

use std::{path::Path, sync::OnceLock};

use portmon::registry::{Format, PortRange, Registry, Transport};

const IANA_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/iana/service-names-port-numbers.csv"
);

fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        std::fs::read_to_string(IANA_CSV)
            .unwrap_or_else(|e| panic!("reading the shared registry {IANA_CSV}: {e}"))
    })
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry::from_file(Path::new(IANA_CSV)).unwrap_or_else(|e| panic!("{e:#?}")))
}

#[test]
fn record_count_matches_an_independent_count() {
    // IANA ends every record with CRLF and breaks lines inside quoted fields
    // with a bare LF, so CRLFs count records (plus the header).
    let crlf = text().matches("\r\n").count();
    let source = registry().source();
    assert_eq!(source.format, Format::IanaCsv);
    assert_eq!(source.entries, crlf - 1);
    assert_eq!(registry().entries().len(), crlf - 1);
    // A second, field-level count: records that name a transport.
    for transport in Transport::ALL {
        let lines = text().matches(&format!(",{transport},")).count();
        let records = registry()
            .entries()
            .filter(|e| e.transport == Some(transport))
            .count();
        // `,tcp,` could in principle appear in a description; it does not in
        // this edition, and a mismatch would say which count is off.
        assert_eq!(records, lines, "{transport}");
    }
}

#[test]
fn well_known_service_names() {
    let cases = [
        (22, Transport::Tcp, Some("ssh")),
        (22, Transport::Sctp, Some("ssh")),
        (53, Transport::Udp, Some("domain")),
        (80, Transport::Tcp, Some("http")),
        (443, Transport::Tcp, Some("https")),
        (5432, Transport::Tcp, Some("postgresql")),
        (5432, Transport::Udp, Some("postgresql")),
        (6000, Transport::Tcp, Some("x11")),
        (6063, Transport::Udp, Some("x11")),
        (6064, Transport::Tcp, Some("ndl-ahp-svc")),
        (9, Transport::Dccp, Some("discard")),
        // Records without a transport are filed under TCP and UDP.
        (6400, Transport::Tcp, Some("boe-cms")),
        (27005, Transport::Udp, Some("flex-lm")),
        (0, Transport::Tcp, None),
        (275, Transport::Tcp, None),
        (50000, Transport::Tcp, None),
        (65535, Transport::Udp, None),
    ];
    for (port, transport, name) in cases {
        assert_eq!(
            registry().service_name(port, transport),
            name,
            "{port}/{transport}"
        );
    }
}

#[test]
fn ranges_expand_to_every_port() {
    for port in 6000..=6063 {
        for transport in [Transport::Tcp, Transport::Udp] {
            let x11: Vec<_> = registry()
                .by_port(port, transport)
                .filter(|e| e.name == Some("x11"))
                .collect();
            assert_eq!(x11.len(), 1, "{port}/{transport}");
            assert_eq!(
                x11[0].ports,
                Some(PortRange {
                    low: 6000,
                    high: 6063
                })
            );
        }
    }
}

#[test]
fn several_services_on_one_port() {
    let names: Vec<_> = registry()
        .by_port(80, Transport::Tcp)
        .filter_map(|e| e.name)
        .collect();
    assert_eq!(names, ["http", "www", "www-http"]);
    // The primary name is the first listed.
    assert_eq!(registry().service_name(80, Transport::Tcp), Some("http"));
}

#[test]
fn unassigned_ranges_have_no_name_but_a_description() {
    for port in 272..=279 {
        assert_eq!(registry().service_name(port, Transport::Tcp), None);
        let entries: Vec<_> = registry().by_port(port, Transport::Tcp).collect();
        assert_eq!(entries.len(), 1, "{port}");
        assert_eq!((entries[0].name, entries[0].description), (None, "Unassigned"));
    }
}

#[test]
fn names_without_ports_and_quoted_fields() {
    let sonar: Vec<_> = registry().by_name("7KSONAR").collect();
    assert_eq!(sonar.len(), 2);
    assert!(sonar.iter().all(|e| e.ports.is_none()));
    // Quoted, with doubled quotes inside.
    let whoispp = registry().by_name("whoispp").next().unwrap();
    assert!(
        whoispp.description.contains("\"whois++\""),
        "{:?}",
        whoispp.description
    );
    assert!(registry()
        .by_name("postgresql")
        .all(|e| e.ports == Some(PortRange::single(5432))));
}

#[test]
fn sctp_and_dccp_records_exist() {
    for transport in [Transport::Sctp, Transport::Dccp] {
        assert!(
            registry().entries().any(|e| e.transport == Some(transport)),
            "{transport}"
        );
    }
}

#[test]
fn structure_stays_small() {
    let bytes = registry().heap_size();
    assert!(bytes < 8 << 20, "{bytes} bytes");
}
