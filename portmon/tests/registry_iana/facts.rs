//! The full registry parses whole and answers what every edition of it
//! holds: IANA adds and amends records but keeps these assignments, so the
//! tests pass on whichever copy they are given.

use portmon::registry::{Format, PortRange, Transport};

use crate::iana;

/// The records of the file, split without portmon's parser: IANA ends every
/// record with CRLF and breaks lines inside quoted fields with a bare LF.
fn records(text: &str) -> impl Iterator<Item = &str> {
    text.split("\r\n").skip(1).filter(|r| !r.is_empty())
}

/// A record's first three fields (name, ports, transport): IANA never
/// quotes them, so a split on commas is exact up to the description.
fn leading_fields(record: &str) -> (&str, &str, &str) {
    let mut fields = record.splitn(4, ',');
    let mut next = || fields.next().unwrap_or("");
    (next(), next(), next())
}

#[test]
fn record_count_matches_an_independent_count() {
    let Some(iana) = iana() else { return };
    let records: Vec<&str> = records(&iana.text).collect();
    let source = iana.registry.source();
    assert_eq!(source.format, Format::IanaCsv);
    assert_eq!(source.path, iana.path);
    assert_eq!(source.entries, records.len());
    assert_eq!(iana.registry.entries().len(), records.len());
    // A second, field-level count: records that name each transport.
    for transport in Transport::ALL {
        let lines = records
            .iter()
            .filter(|r| leading_fields(r).2 == transport.label())
            .count();
        let parsed = iana
            .registry
            .entries()
            .filter(|e| e.transport == Some(transport))
            .count();
        assert_eq!(parsed, lines, "{transport}");
    }
    // And a third: records with a name but no port number.
    let lines = records
        .iter()
        .filter(|r| {
            let (name, ports, _) = leading_fields(r);
            !name.is_empty() && ports.is_empty()
        })
        .count();
    let parsed = iana
        .registry
        .entries()
        .filter(|e| e.name.is_some() && e.ports.is_none())
        .count();
    assert_eq!(parsed, lines);
    assert!(lines > 0, "IANA lists services without a port");
}

#[test]
fn well_known_service_names() {
    let Some(iana) = iana() else { return };
    // Assignments older than the registry's CSV, each in an RFC.
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
        (9, Transport::Dccp, Some("discard")),
        // Reserved, never assigned.
        (0, Transport::Tcp, None),
        (0, Transport::Udp, None),
    ];
    for (port, transport, name) in cases {
        assert_eq!(
            iana.registry.service_name(port, transport),
            name,
            "{port}/{transport}"
        );
    }
}

#[test]
fn ranges_expand_to_every_port() {
    let Some(iana) = iana() else { return };
    for port in 6000..=6063 {
        for transport in [Transport::Tcp, Transport::Udp] {
            let x11: Vec<_> = iana
                .registry
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
    // Every range record, named or not, is found on its first, middle and
    // last port.
    let ranges: Vec<_> = iana
        .registry
        .entries()
        .filter(|e| e.ports.is_some_and(|p| p.low < p.high))
        .collect();
    assert!(!ranges.is_empty());
    for entry in ranges {
        let range = entry.ports.expect("filtered on ports");
        let transports = entry
            .transport
            .map_or(vec![Transport::Tcp, Transport::Udp], |t| vec![t]);
        for port in [range.low, range.low + (range.high - range.low) / 2, range.high] {
            for &transport in &transports {
                assert!(
                    iana.registry
                        .by_port(port, transport)
                        .any(|e| e.ports == Some(range) && e.description == entry.description),
                    "{port}/{transport}: {entry:?}"
                );
            }
        }
    }
}

#[test]
fn several_services_on_one_port() {
    let Some(iana) = iana() else { return };
    let names: Vec<_> = iana
        .registry
        .by_port(80, Transport::Tcp)
        .filter_map(|e| e.name)
        .collect();
    assert!(names.len() > 1, "{names:?}");
    // The primary name is the first listed.
    assert_eq!(names[0], "http");
    assert_eq!(iana.registry.service_name(80, Transport::Tcp), Some("http"));
}

#[test]
fn unassigned_ranges_have_no_name_but_a_description() {
    let Some(iana) = iana() else { return };
    let unassigned: Vec<_> = iana
        .registry
        .entries()
        .filter(|e| e.description == "Unassigned")
        .collect();
    assert!(!unassigned.is_empty());
    for entry in unassigned {
        assert_eq!(entry.name, None, "{entry:?}");
        assert!(entry.ports.is_some(), "{entry:?}");
    }
}

#[test]
fn quoted_fields_are_unquoted() {
    let Some(iana) = iana() else { return };
    // IANA quotes descriptions that hold a comma, a quote (doubled) or a
    // line break; what portmon keeps is the text inside.
    let descriptions: Vec<&str> = iana.registry.entries().map(|e| e.description).collect();
    for held in [",", "\"", "\n"] {
        assert!(descriptions.iter().any(|d| d.contains(held)), "{held:?}");
    }
    for description in descriptions {
        assert!(!description.contains("\"\""), "{description:?}");
    }
}

#[test]
fn sctp_and_dccp_records_exist() {
    let Some(iana) = iana() else { return };
    for transport in [Transport::Sctp, Transport::Dccp] {
        assert!(
            iana.registry.entries().any(|e| e.transport == Some(transport)),
            "{transport}"
        );
    }
}

#[test]
fn structure_stays_small() {
    let Some(iana) = iana() else { return };
    let bytes = iana.registry.heap_size();
    assert!(bytes < 8 << 20, "{bytes} bytes");
}
