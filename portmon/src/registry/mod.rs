//! The port registry: which service IANA registered on a port, from IANA's
//! CSV or from the host's `/etc/services`.
//!
//! The registry is read once and then answers lookups from a flat index
//! (see `index.rs`): [`Registry::service_name`] is what the daemon calls
//! per reported port, and costs a few loads.
//!
//! Which file is read: `--registry PATH` if given (either format, detected
//! from its content), else [`DEFAULT_IANA_PATH`] if it exists (written by
//! `portmon registry update`), else [`ETC_SERVICES_PATH`].

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

mod details;
mod etc_services;
mod iana_csv;
mod index;
mod source;
pub mod update;

pub use details::{Assignment, Details};
pub(crate) use details::{DETAIL_COLUMNS, DETAIL_SEPARATOR};
pub use source::{detect_format, Format, Source, DEFAULT_IANA_PATH, ETC_SERVICES_PATH, MAX_FILE_BYTES};

/// A transport protocol as the registry names it. Wider than
/// `portmon_common::Proto` (what the kernel side reports): IANA also
/// registers SCTP and DCCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// DCCP.
    Dccp,
}

impl Transport {
    /// Every transport, in the registry's usual order.
    pub const ALL: [Transport; 4] = [Transport::Tcp, Transport::Udp, Transport::Sctp, Transport::Dccp];

    /// The label used in the registry files, metrics, the CLI and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Sctp => "sctp",
            Transport::Dccp => "dccp",
        }
    }

    /// The transport named by `label`, in any case.
    pub fn from_label(label: &str) -> Option<Self> {
        Transport::ALL
            .into_iter()
            .find(|t| t.label().eq_ignore_ascii_case(label))
    }
}

impl From<portmon_common::Proto> for Transport {
    fn from(proto: portmon_common::Proto) -> Self {
        match proto {
            portmon_common::Proto::Tcp => Transport::Tcp,
            portmon_common::Proto::Udp => Transport::Udp,
        }
    }
}

impl FromStr for Transport {
    type Err = ParseErrorKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Transport::from_label(text).ok_or_else(|| ParseErrorKind::UnknownTransport {
            text: text.to_owned(),
        })
    }
}

portmon_common::label_text!(Transport);

/// An inclusive range of ports, as the registry writes them (`6000-6063`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port (equal to `low` for a single port).
    pub high: u16,
}

impl PortRange {
    /// The range holding only `port`.
    pub const fn single(port: u16) -> Self {
        PortRange {
            low: port,
            high: port,
        }
    }

    /// Whether `port` lies in the range.
    pub const fn contains(self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }

    /// Number of ports in the range (1 to 65536).
    pub const fn port_count(self) -> u32 {
        self.high as u32 - self.low as u32 + 1
    }

    /// The ports of the range, lowest first.
    pub fn ports(self) -> std::ops::RangeInclusive<u16> {
        self.low..=self.high
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One record of the registry, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceEntry<'r> {
    /// The service name; `None` for IANA's `Reserved` and `Unassigned`
    /// records, whose description says which.
    pub name: Option<&'r str>,
    /// The ports; `None` for a service name registered without a port.
    pub ports: Option<PortRange>,
    /// The transport; `None` where IANA's record names none (old TCP+UDP
    /// assignments, which the port index files under both).
    pub transport: Option<Transport>,
    /// IANA's description, or the comment of an `/etc/services` line.
    pub description: &'r str,
    aliases: &'r str,
    details: &'r str,
}

impl<'r> ServiceEntry<'r> {
    /// Other names of the service (`/etc/services` aliases; IANA's CSV has none).
    pub fn aliases(&self) -> impl Iterator<Item = &'r str> + 'r {
        self.aliases.split(' ').filter(|a| !a.is_empty())
    }

    /// IANA's columns after the description; all empty for `/etc/services`.
    pub fn details(&self) -> Details<'r> {
        let mut columns = self.details.split(DETAIL_SEPARATOR);
        let mut next = || columns.next().unwrap_or("");
        Details {
            assignee: next(),
            contact: next(),
            registered: next(),
            modified: next(),
            reference: next(),
            service_code: next(),
            unauthorized_use: next(),
            notes: next(),
        }
    }
}

/// A registry file that does not parse, with the line it fails on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line where the offending record starts.
    pub line: usize,
    /// What is wrong there.
    pub kind: ParseErrorKind,
}

/// What is wrong with a line of a registry file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// IANA's CSV starts with a header naming its columns.
    #[error(
        "expected IANA's header `Service Name,Port Number,Transport Protocol,Description,…`, found {found:?}"
    )]
    BadHeader {
        /// The first line (cut to 80 bytes).
        found: String,
    },
    /// A quoted CSV field runs to the end of the file.
    #[error("quoted field is never closed")]
    UnterminatedQuote,
    /// A quoted CSV field is followed by something other than `,` or the end of the line.
    #[error("unexpected text after a quoted field")]
    TextAfterQuote,
    /// A CSV record has another number of fields than the header.
    #[error("expected {expected} fields, found {found}")]
    FieldCount {
        /// Fields in the header.
        expected: usize,
        /// Fields in this record.
        found: usize,
    },
    /// A port field is neither empty, a port, nor a range of ports.
    #[error("{text:?} is not a port (0-65535) or a range of ports")]
    BadPort {
        /// The field.
        text: String,
    },
    /// A range of ports whose first port is above its last.
    #[error("port range {low}-{high} is reversed")]
    ReversedRange {
        /// First port given.
        low: u16,
        /// Last port given.
        high: u16,
    },
    /// A transport other than tcp, udp, sctp or dccp (in IANA's CSV; an
    /// `/etc/services` line with another protocol, e.g. `ddp`, is skipped).
    #[error("unknown transport protocol {text:?}: expected tcp, udp, sctp or dccp")]
    UnknownTransport {
        /// The field.
        text: String,
    },
    /// An `/etc/services` line without `port/protocol` after the name.
    #[error("expected `name port/protocol [aliases…] [# comment]`, found {text:?}")]
    BadServicesLine {
        /// The line (cut to 80 bytes).
        text: String,
    },
    /// The file expands to more (port, transport) pairs than the index holds.
    #[error("the registry lists more than {limit} (port, protocol) pairs")]
    TooManyPorts {
        /// The most pairs the index takes.
        limit: usize,
    },
    /// The file holds more text or records than `u32` offsets reach.
    #[error("the registry holds more than {limit} bytes of text or records")]
    TooMuchText {
        /// The most bytes (and records) the index takes.
        limit: usize,
    },
}

/// Errors loading the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No `--registry` was given and neither default file exists.
    #[error(
        "no port registry: neither {iana} nor {services} exists; run `portmon registry update` \
         or pass --registry PATH"
    )]
    NoRegistry {
        /// The IANA CSV looked for.
        iana: PathBuf,
        /// The `/etc/services` looked for.
        services: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read registry {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any registry.
    #[error("registry {path} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes read.
        limit: u64,
    },
    /// The file does not parse.
    #[error("cannot parse registry {path} ({format} format)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The format detected from its content.
        format: Format,
        /// Where and why.
        #[source]
        source: ParseError,
    },
}

/// The loaded registry, ready for lookups.
#[derive(Debug, Clone)]
pub struct Registry {
    index: index::Index,
    source: Source,
}

impl Registry {
    /// Loads the registry: `explicit` if given, else [`DEFAULT_IANA_PATH`]
    /// if it exists, else [`ETC_SERVICES_PATH`]. The format is detected from
    /// the content. A daemon that prefers running without names to not
    /// running can fall back to [`Registry::empty`].
    pub fn load(explicit: Option<&Path>) -> Result<Self, RegistryError> {
        Self::load_with_defaults(
            explicit,
            Path::new(DEFAULT_IANA_PATH),
            Path::new(ETC_SERVICES_PATH),
        )
    }

    /// [`Registry::load`] with other default locations (for tests).
    pub fn load_with_defaults(
        explicit: Option<&Path>,
        iana_default: &Path,
        services_default: &Path,
    ) -> Result<Self, RegistryError> {
        let path = source::choose(explicit, iana_default, services_default)?;
        Self::from_file(&path)
    }

    /// Reads and parses one file, whichever format it holds.
    pub fn from_file(path: &Path) -> Result<Self, RegistryError> {
        let text = source::read(path)?;
        Self::parse(&text, path).map_err(|source| RegistryError::Parse {
            path: path.to_owned(),
            format: detect_format(&text),
            source,
        })
    }

    /// Parses registry text of either format; `path` is only recorded in
    /// [`Registry::source`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ParseError> {
        let format = detect_format(text);
        let index = match format {
            Format::IanaCsv => iana_csv::parse(text)?,
            Format::EtcServices => etc_services::parse(text)?,
        };
        let source = Source {
            path: path.to_owned(),
            format,
            entries: index.len(),
        };
        Ok(Registry { index, source })
    }

    /// Parses `text` as `format`, whatever it looks like: the fuzz targets'
    /// way into each parser. Returns how many entries it read.
    pub(crate) fn parse_as(format: Format, text: &str) -> Result<usize, ParseError> {
        let index = match format {
            Format::IanaCsv => iana_csv::parse(text)?,
            Format::EtcServices => etc_services::parse(text)?,
        };
        Ok(index.len())
    }

    /// A registry with no entries: every lookup answers nothing.
    pub fn empty() -> Self {
        let index = index::Builder::new(0).finish();
        Registry {
            index,
            source: Source {
                path: PathBuf::new(),
                format: Format::EtcServices,
                entries: 0,
            },
        }
    }

    /// Where the registry came from, in which format, and how many records
    /// it holds.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the registry has no records.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// The primary service name on `port` over `transport`: the first
    /// non-empty name the registry lists there. The daemon's hot path.
    #[inline]
    pub fn service_name(&self, port: u16, transport: Transport) -> Option<&str> {
        self.index.primary_name(port, transport)
    }

    /// Every record covering `port` over `transport`, in file order,
    /// `Reserved`/`Unassigned` ones included.
    pub fn by_port(
        &self,
        port: u16,
        transport: Transport,
    ) -> impl ExactSizeIterator<Item = ServiceEntry<'_>> {
        self.index.by_port(port, transport)
    }

    /// How IANA stands on `port` over `transport`. A registry read from
    /// `/etc/services` has no `Reserved`/`Unassigned` records, so there
    /// every port without a name is `unassigned`.
    pub fn assignment(&self, port: u16, transport: Transport) -> Assignment {
        if port >= 49152 {
            return Assignment::Dynamic;
        }
        if self.index.primary_name(port, transport).is_some() {
            return Assignment::Assigned;
        }
        let mut found = Assignment::Unassigned;
        for entry in self.index.by_port(port, transport) {
            if entry.description.starts_with("Reserved") {
                return Assignment::Reserved;
            }
            if !entry.description.starts_with("Unassigned") {
                found = Assignment::Assigned;
            }
        }
        found
    }

    /// Every record whose name or alias is `name`, ignoring ASCII case, in
    /// file order.
    pub fn by_name(&self, name: &str) -> impl Iterator<Item = ServiceEntry<'_>> {
        self.index.by_name(name)
    }

    /// Every record, in file order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = ServiceEntry<'_>> {
        self.index.entries()
    }

    /// Bytes the registry holds on the heap (from its buffers' capacities).
    pub fn heap_size(&self) -> usize {
        self.index.heap_size() + self.source.path.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IANA_SAMPLE: &str = "\
Service Name,Port Number,Transport Protocol,Description,Assignee,Contact,Registration Date,Modification Date,Reference,Service Code,Unauthorized Use Reported,Assignment Notes\r
,0,tcp,Reserved,[Jon_Postel],[Jon_Postel],,,,,,\r
ssh,22,tcp,The Secure Shell (SSH) Protocol,,,,,[RFC4251],,,\r
ssh,22,sctp,SSH,,,,,,,,\r
whoispp,63,tcp,\"whois++ replacement for \"\"whois++\"\".\",,,,,,,,\r
whois++,63,tcp,whois++,,,,,,,,\"This entry is an alias to \"\"whoispp\"\".\nSee RFC 6335.\"\r
,272-279,,Unassigned,,,,,,,,\r
x11,6000-6063,tcp,X Window System,,,,,,,,\r
PostgreSQL,5432,tcp,PostgreSQL Database,,,,,,,,\r
7ksonar,,tcp,Teledyne Marine 7k Sonar Protocol,,,,,,,,\r
";

    fn sample() -> Registry {
        Registry::parse(IANA_SAMPLE, Path::new("sample.csv")).unwrap()
    }

    #[test]
    fn service_name_table() {
        let registry = sample();
        let cases = [
            (0, Transport::Tcp, None),
            (22, Transport::Tcp, Some("ssh")),
            (22, Transport::Udp, None),
            (22, Transport::Sctp, Some("ssh")),
            (63, Transport::Tcp, Some("whoispp")),
            (272, Transport::Tcp, None),
            (5432, Transport::Tcp, Some("PostgreSQL")),
            (5999, Transport::Tcp, None),
            (6000, Transport::Tcp, Some("x11")),
            (6063, Transport::Tcp, Some("x11")),
            (6064, Transport::Tcp, None),
            (6000, Transport::Udp, None),
            (65535, Transport::Dccp, None),
        ];
        for (port, transport, name) in cases {
            assert_eq!(registry.service_name(port, transport), name, "{port}/{transport}");
        }
    }

    #[test]
    fn by_port_lists_every_record_in_file_order() {
        let registry = sample();
        let names: Vec<_> = registry.by_port(63, Transport::Tcp).map(|e| e.name).collect();
        assert_eq!(names, [Some("whoispp"), Some("whois++")]);
        let whoispp = registry.by_port(63, Transport::Tcp).next().unwrap();
        assert_eq!(whoispp.description, "whois++ replacement for \"whois++\".");

        // A record without a transport is filed under TCP and UDP.
        for transport in [Transport::Tcp, Transport::Udp] {
            let entries: Vec<_> = registry.by_port(275, transport).collect();
            assert_eq!(entries.len(), 1);
            assert_eq!((entries[0].name, entries[0].description), (None, "Unassigned"));
            assert_eq!(entries[0].ports, Some(PortRange { low: 272, high: 279 }));
        }
        assert_eq!(registry.by_port(275, Transport::Sctp).len(), 0);
        let reserved: Vec<_> = registry.by_port(0, Transport::Tcp).collect();
        assert_eq!(reserved[0].description, "Reserved");
    }

    #[test]
    fn by_name_ignores_case_and_finds_portless_names() {
        let registry = sample();
        let cases = [
            ("postgresql", vec![Some(PortRange::single(5432))]),
            ("POSTGRESQL", vec![Some(PortRange::single(5432))]),
            (
                "SSH",
                vec![Some(PortRange::single(22)), Some(PortRange::single(22))],
            ),
            (
                "x11",
                vec![Some(PortRange {
                    low: 6000,
                    high: 6063,
                })],
            ),
            ("7ksonar", vec![None]),
            ("whois", vec![]),
            ("", vec![]),
        ];
        for (name, ports) in cases {
            let found: Vec<_> = registry.by_name(name).map(|e| e.ports).collect();
            assert_eq!(found, ports, "{name}");
        }
    }

    #[test]
    fn source_counts_records() {
        let registry = sample();
        assert_eq!(registry.source().format, Format::IanaCsv);
        assert_eq!(registry.source().entries, 9);
        assert_eq!(registry.entries().len(), 9);
        assert_eq!(registry.source().path, Path::new("sample.csv"));
        assert!(registry.heap_size() > 0);
    }

    #[test]
    fn empty_registry_answers_nothing() {
        let registry = Registry::empty();
        assert!(registry.is_empty());
        assert_eq!(registry.service_name(22, Transport::Tcp), None);
        assert_eq!(registry.by_port(22, Transport::Tcp).len(), 0);
        assert_eq!(registry.by_name("ssh").count(), 0);
    }

    #[test]
    fn transport_labels_round_trip() {
        for transport in Transport::ALL {
            assert_eq!(transport.label().parse(), Ok(transport));
            assert_eq!(transport.label().to_uppercase().parse(), Ok(transport));
        }
        assert_eq!(
            "ddp".parse::<Transport>(),
            Err(ParseErrorKind::UnknownTransport { text: "ddp".into() })
        );
        assert_eq!(Transport::from(portmon_common::Proto::Udp), Transport::Udp);
    }

    #[test]
    fn port_range_display() {
        let cases = [
            ((80, 80), "80", 1),
            ((6000, 6063), "6000-6063", 64),
            ((0, 65535), "0-65535", 65536),
        ];
        for ((low, high), text, len) in cases {
            let range = PortRange { low, high };
            assert_eq!((range.to_string(), range.port_count()), (text.to_owned(), len));
        }
    }
}
