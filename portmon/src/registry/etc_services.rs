//! The `/etc/services` format (services(5)): one service per line,
//! `name port/protocol [aliases...] [# comment]`.
//!
//! Lines whose protocol portmon does not know (`ddp` on Debian's file) are
//! skipped, not refused: the file is the host's, and those lines are
//! legitimate there.

use super::{
    index::{Builder, Index, NewRecord},
    ParseError, ParseErrorKind, PortRange, Transport,
};

/// Parses the whole file.
pub(super) fn parse(text: &str) -> Result<Index, ParseError> {
    let mut builder = Builder::new(text.len());
    let mut aliases = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let (fields, comment) = line.split_once('#').unwrap_or((line, ""));
        let mut fields = fields.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let bad_line = || {
            let text = line.chars().take(80).collect();
            ParseError {
                line: number,
                kind: ParseErrorKind::BadServicesLine { text },
            }
        };
        let (port, protocol) = fields
            .next()
            .and_then(|f| f.split_once('/'))
            .ok_or_else(bad_line)?;
        let port: u16 = port.parse().map_err(|_| ParseError {
            line: number,
            kind: ParseErrorKind::BadPort {
                text: port.to_owned(),
            },
        })?;
        let Some(transport) = Transport::from_label(protocol) else {
            continue;
        };
        aliases.clear();
        aliases.extend(fields);
        let record = NewRecord {
            name,
            ports: Some(PortRange::single(port)),
            transport: Some(transport),
            description: comment.trim(),
            aliases: &aliases,
            details: "",
        };
        builder.push(number, record)?;
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_table() {
        // (line, parsed as (name, port, transport, aliases, description))
        type Parsed = (
            &'static str,
            u16,
            Transport,
            &'static [&'static str],
            &'static str,
        );
        let cases: &[(&str, Option<Parsed>)] = &[
            ("", None),
            ("   ", None),
            ("# Network services, Internet style", None),
            ("ssh\t\t22/tcp", Some(("ssh", 22, Transport::Tcp, &[], ""))),
            (
                "http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP",
                Some(("http", 80, Transport::Tcp, &["www"], "WorldWideWeb HTTP")),
            ),
            (
                "kerberos 88/udp kerberos5 krb5 kerberos-sec # Kerberos v5",
                Some((
                    "kerberos",
                    88,
                    Transport::Udp,
                    &["kerberos5", "krb5", "kerberos-sec"],
                    "Kerberos v5",
                )),
            ),
            (
                "sctp-svc 9/SCTP#no space",
                Some(("sctp-svc", 9, Transport::Sctp, &[], "no space")),
            ),
            ("rtmp 1/ddp # Routing Table Maintenance Protocol", None),
            ("domain 53/udp\r", Some(("domain", 53, Transport::Udp, &[], ""))),
        ];
        for (line, want) in cases {
            let index = parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let got: Vec<_> = index
                .entries()
                .map(|e| {
                    let ports = e.ports.map(|p| p.low);
                    (
                        e.name,
                        ports,
                        e.transport,
                        e.aliases().collect::<Vec<_>>(),
                        e.description,
                    )
                })
                .collect();
            let want: Vec<_> = want
                .iter()
                .map(|&(name, port, transport, aliases, description)| {
                    (
                        Some(name),
                        Some(port),
                        Some(transport),
                        aliases.to_vec(),
                        description,
                    )
                })
                .collect();
            assert_eq!(got, want, "{line:?}");
        }
    }

    #[test]
    fn errors_table() {
        let cases = [
            ("ssh", ParseErrorKind::BadServicesLine { text: "ssh".into() }),
            (
                "ssh 22",
                ParseErrorKind::BadServicesLine {
                    text: "ssh 22".into(),
                },
            ),
            (
                "ssh # 22/tcp",
                ParseErrorKind::BadServicesLine {
                    text: "ssh # 22/tcp".into(),
                },
            ),
            ("ssh 70000/tcp", ParseErrorKind::BadPort { text: "70000".into() }),
            ("ssh /tcp", ParseErrorKind::BadPort { text: "".into() }),
            ("ssh -1/tcp", ParseErrorKind::BadPort { text: "-1".into() }),
        ];
        for (line, kind) in cases {
            let text = format!("# header\n\necho 7/tcp\n{line}\n");
            assert_eq!(
                parse(&text).map(|i| i.len()),
                Err(ParseError { line: 4, kind }),
                "{line:?}"
            );
        }
    }

    #[test]
    fn host_file_parses() {
        // Every Linux host (and container image with netbase) has one; the
        // test says so rather than passing silently where it is missing.
        let text = std::fs::read_to_string("/etc/services").expect("/etc/services is readable");
        let index = parse(&text).unwrap_or_else(|e| panic!("/etc/services: {e}"));
        assert!(index.primary_name(22, Transport::Tcp).is_some());
    }
}
