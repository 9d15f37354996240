//! What IANA's registry says of a port beyond its name: the remaining
//! columns of a record ([`Details`]) and where the port stands
//! ([`Assignment`], computed by `Registry::assignment`).

use std::fmt;

/// Separates the detail columns of a record in the registry's arena: a
/// control character no IANA field holds (the parser drops it if one does).
pub(crate) const DETAIL_SEPARATOR: char = '\u{1f}';

/// IANA's columns of a record beyond name, port, transport and
/// description, each empty where the record (or the file) has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Details<'r> {
    /// `Assignee`: who registered it (`[IESG]`, a person's tag).
    pub assignee: &'r str,
    /// `Contact`.
    pub contact: &'r str,
    /// `Registration Date`.
    pub registered: &'r str,
    /// `Modification Date`.
    pub modified: &'r str,
    /// `Reference` (RFCs, documents).
    pub reference: &'r str,
    /// `Service Code`.
    pub service_code: &'r str,
    /// `Unauthorized Use Reported`.
    pub unauthorized_use: &'r str,
    /// `Assignment Notes`: de-assignments, aliases, TXT keys.
    pub notes: &'r str,
}

/// The IANA columns [`Details`] holds, in its order.
pub(crate) const DETAIL_COLUMNS: [&str; 8] = [
    "Assignee",
    "Contact",
    "Registration Date",
    "Modification Date",
    "Reference",
    "Service Code",
    "Unauthorized Use Reported",
    "Assignment Notes",
];

/// How IANA's registry stands on a port: the `assignment` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// A service is registered on it (or a use named without a service
    /// name, such as "any private mail system").
    Assigned,
    /// IANA's `Reserved` record: not to be used (often a de-assigned port).
    Reserved,
    /// IANA's `Unassigned` record, or no record at all.
    Unassigned,
    /// 49152-65535, IANA's dynamic range: never assigned.
    Dynamic,
}

impl Assignment {
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Assignment::Assigned => "assigned",
            Assignment::Reserved => "reserved",
            Assignment::Unassigned => "unassigned",
            Assignment::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::registry::{Registry, Transport};

    const SAMPLE: &str = "\
Service Name,Port Number,Transport Protocol,Description,Assignee,Contact,Registration Date,Modification Date,Reference,Service Code,Unauthorized Use Reported,Assignment Notes\r
,0,tcp,Reserved,[Jon_Postel],[Jon_Postel],,,,,,\r
,24,tcp,any private mail system,[Rick_Adams],[Rick_Adams],,,,,,\r
http,80,tcp,World Wide Web HTTP,[IESG],[IETF_Chair],,2021-10-01,[RFC9110],,,\r
www,80,tcp,World Wide Web HTTP,,,,,,,,\"This entry is an alias to \"\"http\"\".\"\r
,272-279,,Unassigned,,,,,,,,\r
,10321,tcp,Reserved,,,,2023-12-05,,,,De-Assigned on 2023-12-05.\r
";

    fn registry() -> Registry {
        Registry::parse(SAMPLE, Path::new("sample.csv")).unwrap()
    }

    #[test]
    fn assignment_table() {
        let registry = registry();
        let cases = [
            (0, Transport::Tcp, Assignment::Reserved),
            (24, Transport::Tcp, Assignment::Assigned),
            (80, Transport::Tcp, Assignment::Assigned),
            (80, Transport::Udp, Assignment::Unassigned),
            (275, Transport::Udp, Assignment::Unassigned),
            (10321, Transport::Tcp, Assignment::Reserved),
            (12345, Transport::Tcp, Assignment::Unassigned),
            (49151, Transport::Tcp, Assignment::Unassigned),
            (49152, Transport::Tcp, Assignment::Dynamic),
            (65535, Transport::Udp, Assignment::Dynamic),
        ];
        for (port, transport, want) in cases {
            assert_eq!(registry.assignment(port, transport), want, "{port}/{transport}");
        }
    }

    #[test]
    fn details_keep_every_column() {
        let registry = registry();
        let http: Vec<Details<'_>> = registry
            .by_port(80, Transport::Tcp)
            .map(|e| e.details())
            .collect();
        assert_eq!(
            http,
            [
                Details {
                    assignee: "[IESG]",
                    contact: "[IETF_Chair]",
                    modified: "2021-10-01",
                    reference: "[RFC9110]",
                    ..Details::default()
                },
                Details {
                    notes: "This entry is an alias to \"http\".",
                    ..Details::default()
                },
            ]
        );
        let deassigned = registry.by_port(10321, Transport::Tcp).next().unwrap().details();
        assert_eq!(deassigned.notes, "De-Assigned on 2023-12-05.");
        assert_eq!(deassigned.modified, "2023-12-05");
    }

    #[test]
    fn files_without_the_detail_columns_parse() {
        let text = "Service Name,Port Number,Transport Protocol,Description\r\nssh,22,tcp,SSH\r\n";
        let registry = Registry::parse(text, Path::new("short.csv")).unwrap();
        let ssh = registry.by_port(22, Transport::Tcp).next().unwrap();
        assert_eq!(ssh.details(), Details::default());
    }
}
