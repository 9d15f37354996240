//! The registry's in-memory layout, built once by the parsers.
//!
//! Every string lives in one arena `String`; records point into it with
//! `u32` spans. Ports are indexed densely: one slot per (transport, port),
//! 4 × 65536 slots, each with the records covering it (a range such as
//! 6000-6063 fills 64 slots) and the record holding its primary name. The
//! full IANA registry takes about 3 MB this way, most of it the two
//! 1 MiB slot tables, and a name lookup is three dependent loads.

use std::ops::Range;

use super::{ParseError, ParseErrorKind, PortRange, ServiceEntry, Transport};

const PORTS: usize = 1 << 16;
const SLOTS: usize = Transport::ALL.len() * PORTS;

/// Marks a slot without a named record.
const NO_RECORD: u32 = u32::MAX;

/// At most this many (port, transport) pairs: the IANA registry has about
/// 100,000; a file of full ranges could otherwise ask for billions.
pub(super) const MAX_SLOT_ENTRIES: usize = 1 << 24;

/// Transports a record is filed under: its own, or TCP and UDP for IANA's
/// records without one (assignments from before SCTP and DCCP, made for
/// both TCP and UDP).
fn filed_under(transport: Option<Transport>) -> &'static [Transport] {
    const TCP_UDP: [Transport; 2] = [Transport::Tcp, Transport::Udp];
    match transport {
        Some(Transport::Tcp) => &[Transport::Tcp],
        Some(Transport::Udp) => &[Transport::Udp],
        Some(Transport::Sctp) => &[Transport::Sctp],
        Some(Transport::Dccp) => &[Transport::Dccp],
        None => &TCP_UDP,
    }
}

#[inline]
fn slot(port: u16, transport: Transport) -> usize {
    (transport as usize) << 16 | usize::from(port)
}

/// A string in the arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        // u32 → usize never truncates on the 32- and 64-bit targets portmon runs on.
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

#[derive(Debug, Clone)]
struct Record {
    name: Span,
    description: Span,
    /// Space-separated.
    aliases: Span,
    /// IANA's remaining columns, joined by [`super::DETAIL_SEPARATOR`].
    details: Span,
    ports: Option<PortRange>,
    transport: Option<Transport>,
}

/// A name or alias and the record it belongs to; sorted case-insensitively.
#[derive(Debug, Clone, Copy)]
struct NameKey {
    name: Span,
    record: u32,
}

/// One record as a parser hands it over.
#[derive(Debug, Clone, Copy)]
pub(super) struct NewRecord<'a> {
    pub name: &'a str,
    pub ports: Option<PortRange>,
    pub transport: Option<Transport>,
    pub description: &'a str,
    pub aliases: &'a [&'a str],
    /// IANA's remaining columns, joined by [`super::DETAIL_SEPARATOR`]; empty
    /// when all are.
    pub details: &'a str,
}

/// Collects records, then lays out the index.
#[derive(Debug)]
pub(super) struct Builder {
    arena: String,
    records: Vec<Record>,
    slot_entries: usize,
    /// The previous record's name, description and details.
    previous: Option<(Span, Span, Span)>,
}

impl Builder {
    /// `text_len` sizes the arena: the records' text is at most the file's.
    pub(super) fn new(text_len: usize) -> Self {
        Builder {
            arena: String::with_capacity(text_len / 2),
            records: Vec::with_capacity(text_len / 64),
            slot_entries: 0,
            previous: None,
        }
    }

    fn intern(&mut self, text: &str, previous: Option<Span>) -> Span {
        // IANA lists most services twice in a row (tcp, then udp) with the
        // same name and description: reusing the previous span halves the arena.
        if let Some(span) = previous {
            if self.arena.get(span.range()) == Some(text) {
                return span;
            }
        }
        // `push` checked that the arena stays below u32::MAX bytes.
        let span = Span {
            start: self.arena.len() as u32,
            len: text.len() as u32,
        };
        self.arena.push_str(text);
        span
    }

    /// Adds a record that starts on `line` of the file.
    pub(super) fn push(&mut self, line: usize, record: NewRecord<'_>) -> Result<(), ParseError> {
        let slots = record.ports.map_or(0, |p| p.port_count() as usize) * filed_under(record.transport).len();
        let text_len = record.name.len()
            + record.description.len()
            + record.details.len()
            + record.aliases.iter().map(|a| a.len() + 1).sum::<usize>();
        self.slot_entries += slots;
        if self.slot_entries > MAX_SLOT_ENTRIES {
            return Err(ParseError {
                line,
                kind: ParseErrorKind::TooManyPorts {
                    limit: MAX_SLOT_ENTRIES,
                },
            });
        }
        let text_limit = u32::MAX as usize;
        if self.arena.len() + text_len > text_limit || self.records.len() >= NO_RECORD as usize {
            return Err(ParseError {
                line,
                kind: ParseErrorKind::TooMuchText { limit: text_limit },
            });
        }
        let (previous_name, previous_description, previous_details) = match self.previous {
            Some((name, description, details)) => (Some(name), Some(description), Some(details)),
            None => (None, None, None),
        };
        let name = self.intern(record.name, previous_name);
        let description = self.intern(record.description, previous_description);
        let details = self.intern(record.details, previous_details);
        let aliases = if record.aliases.is_empty() {
            Span::default()
        } else {
            self.intern(&record.aliases.join(" "), None)
        };
        self.previous = Some((name, description, details));
        self.records.push(Record {
            name,
            description,
            aliases,
            details,
            ports: record.ports,
            transport: record.transport,
        });
        Ok(())
    }

    /// Lays out the port and name indexes.
    pub(super) fn finish(mut self) -> Index {
        // Counting sort by slot: count, prefix-sum into start offsets, fill.
        let mut slot_starts = vec![0u32; SLOTS + 1];
        for record in &self.records {
            for_each_slot(record, |slot| slot_starts[slot + 1] += 1);
        }
        for i in 1..slot_starts.len() {
            slot_starts[i] += slot_starts[i - 1];
        }
        let mut cursor = slot_starts[..SLOTS].to_vec();
        let mut slot_records = vec![0u32; self.slot_entries];
        let mut primary = vec![NO_RECORD; SLOTS];
        for (id, record) in self.records.iter().enumerate() {
            // `push` keeps the record count below NO_RECORD.
            let id = id as u32;
            let named = record.name.len > 0;
            for_each_slot(record, |slot| {
                slot_records[cursor[slot] as usize] = id;
                cursor[slot] += 1;
                if named && primary[slot] == NO_RECORD {
                    primary[slot] = id;
                }
            });
        }

        let mut names = Vec::with_capacity(self.records.len());
        for (id, record) in self.records.iter().enumerate() {
            let id = id as u32;
            let own = &self.arena[record.name.range()];
            if !own.is_empty() {
                names.push(NameKey {
                    name: record.name,
                    record: id,
                });
            }
            let mut start = record.aliases.start;
            for alias in self.arena[record.aliases.range()].split(' ') {
                let span = Span {
                    start,
                    len: alias.len() as u32,
                };
                start += alias.len() as u32 + 1;
                let earlier = &self.arena[record.aliases.start as usize..span.start as usize];
                let repeated = alias.eq_ignore_ascii_case(own)
                    || earlier.split(' ').any(|e| e.eq_ignore_ascii_case(alias));
                if !alias.is_empty() && !repeated {
                    names.push(NameKey {
                        name: span,
                        record: id,
                    });
                }
            }
        }
        let arena = &self.arena;
        names.sort_unstable_by(|a, b| {
            cmp_ignore_case(&arena[a.name.range()], &arena[b.name.range()]).then(a.record.cmp(&b.record))
        });

        self.arena.shrink_to_fit();
        self.records.shrink_to_fit();
        names.shrink_to_fit();
        Index {
            arena: self.arena,
            records: self.records,
            slot_starts,
            slot_records,
            primary,
            names,
        }
    }
}

fn for_each_slot(record: &Record, mut f: impl FnMut(usize)) {
    let Some(ports) = record.ports else { return };
    for &transport in filed_under(record.transport) {
        for port in ports.ports() {
            f(slot(port, transport));
        }
    }
}

fn cmp_ignore_case(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// The built registry.
#[derive(Debug, Clone)]
pub(super) struct Index {
    arena: String,
    records: Vec<Record>,
    /// `slot_records[slot_starts[s]..slot_starts[s + 1]]` are slot `s`'s records.
    slot_starts: Vec<u32>,
    slot_records: Vec<u32>,
    /// The first named record of each slot, or `NO_RECORD`.
    primary: Vec<u32>,
    names: Vec<NameKey>,
}

impl Index {
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    #[inline]
    pub(super) fn primary_name(&self, port: u16, transport: Transport) -> Option<&str> {
        let id = self.primary[slot(port, transport)];
        // NO_RECORD is past the end, so `get` is the only branch for "none".
        let record = self.records.get(id as usize)?;
        self.arena.get(record.name.range())
    }

    fn entry(&self, id: u32) -> ServiceEntry<'_> {
        let record = &self.records[id as usize];
        let name = &self.arena[record.name.range()];
        ServiceEntry {
            name: (!name.is_empty()).then_some(name),
            ports: record.ports,
            transport: record.transport,
            description: &self.arena[record.description.range()],
            aliases: &self.arena[record.aliases.range()],
            details: &self.arena[record.details.range()],
        }
    }

    pub(super) fn by_port(
        &self,
        port: u16,
        transport: Transport,
    ) -> impl ExactSizeIterator<Item = ServiceEntry<'_>> {
        let slot = slot(port, transport);
        let range = self.slot_starts[slot] as usize..self.slot_starts[slot + 1] as usize;
        self.slot_records[range].iter().map(|&id| self.entry(id))
    }

    pub(super) fn by_name<'s>(&'s self, name: &str) -> impl Iterator<Item = ServiceEntry<'s>> {
        let key = |k: &NameKey| cmp_ignore_case(&self.arena[k.name.range()], name);
        let first = self.names.partition_point(|k| key(k).is_lt());
        let count = self.names[first..].partition_point(|k| key(k).is_eq());
        let mut ids: Vec<u32> = self.names[first..first + count]
            .iter()
            .map(|k| k.record)
            .collect();
        // Sorted by record already, but a record can match by name and alias.
        ids.dedup();
        ids.into_iter().map(|id| self.entry(id))
    }

    pub(super) fn entries(&self) -> impl ExactSizeIterator<Item = ServiceEntry<'_>> {
        (0..self.records.len() as u32).map(|id| self.entry(id))
    }

    pub(super) fn heap_size(&self) -> usize {
        use std::mem::size_of;
        self.arena.capacity()
            + self.records.capacity() * size_of::<Record>()
            + (self.slot_starts.capacity() + self.slot_records.capacity() + self.primary.capacity())
                * size_of::<u32>()
            + self.names.capacity() * size_of::<NameKey>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(name: &'a str, ports: Option<(u16, u16)>, aliases: &'a [&'a str]) -> NewRecord<'a> {
        NewRecord {
            name,
            ports: ports.map(|(low, high)| PortRange { low, high }),
            transport: Some(Transport::Tcp),
            description: "",
            aliases,
            details: "",
        }
    }

    #[test]
    fn aliases_are_names_once() {
        let mut builder = Builder::new(0);
        builder
            .push(1, record("http", Some((80, 80)), &["www", "WWW", "HTTP", "w3"]))
            .unwrap();
        builder.push(2, record("www", Some((8080, 8080)), &[])).unwrap();
        let index = builder.finish();
        let found = |name: &str| {
            index
                .by_name(name)
                .map(|e| e.ports.map(|p| p.low))
                .collect::<Vec<_>>()
        };
        assert_eq!(found("www"), [Some(80), Some(8080)]);
        assert_eq!(found("http"), [Some(80)]);
        assert_eq!(found("w3"), [Some(80)]);
        let aliases: Vec<_> = index
            .by_port(80, Transport::Tcp)
            .next()
            .unwrap()
            .aliases()
            .collect();
        assert_eq!(aliases, ["www", "WWW", "HTTP", "w3"]);
    }

    #[test]
    fn full_range_records_are_limited() {
        let mut builder = Builder::new(0);
        let full = record("", Some((0, 65535)), &[]);
        let pushes = MAX_SLOT_ENTRIES / PORTS;
        for line in 1..=pushes {
            builder.push(line, full).unwrap();
        }
        let err = builder.push(pushes + 1, full).unwrap_err();
        assert_eq!(
            err,
            ParseError {
                line: pushes + 1,
                kind: ParseErrorKind::TooManyPorts {
                    limit: MAX_SLOT_ENTRIES
                }
            }
        );
    }

    #[test]
    fn primary_skips_unnamed_records() {
        let mut builder = Builder::new(0);
        builder.push(1, record("", Some((10, 20)), &[])).unwrap();
        builder.push(2, record("b", Some((15, 15)), &[])).unwrap();
        builder.push(3, record("c", Some((15, 16)), &[])).unwrap();
        let index = builder.finish();
        let cases = [
            (9, None),
            (10, None),
            (15, Some("b")),
            (16, Some("c")),
            (20, None),
        ];
        for (port, name) in cases {
            assert_eq!(index.primary_name(port, Transport::Tcp), name, "{port}");
        }
        assert_eq!(index.by_port(15, Transport::Tcp).len(), 3);
    }
}
