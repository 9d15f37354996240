//! IANA's `service-names-port-numbers.csv`.
//!
//! RFC 4180 CSV: CRLF between records, fields quoted when they hold a
//! comma, a quote (doubled) or a line break (a bare LF inside quotes in
//! IANA's file). Records may have no port (a service name registered
//! alone), a port range (`6000-6063`), no transport (old TCP+UDP
//! assignments) and no service name (`Reserved`/`Unassigned`).

use std::borrow::Cow;

use super::{
    index::{Builder, Index, NewRecord},
    ParseError, ParseErrorKind, PortRange, Transport, DETAIL_COLUMNS, DETAIL_SEPARATOR,
};

/// The columns portmon reads, which must open the header in this order.
pub(super) const HEADER: [&str; 4] = ["Service Name", "Port Number", "Transport Protocol", "Description"];

/// Parses the whole file.
pub(super) fn parse(text: &str) -> Result<Index, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = CsvReader::new(text);
    let mut fields = Vec::with_capacity(16);
    let header_line = reader.next_record(&mut fields)?.unwrap_or(1);
    let header_ok = fields.len() >= HEADER.len() && HEADER.iter().zip(&fields).all(|(want, got)| got == want);
    if !header_ok {
        let first = text.lines().next().unwrap_or("");
        let found = first.chars().take(80).collect();
        return Err(ParseError {
            line: header_line,
            kind: ParseErrorKind::BadHeader { found },
        });
    }
    let columns = fields.len();
    // Where each detail column is, if the file has it: older copies and
    // trimmed ones stop after a few.
    let detail_at = DETAIL_COLUMNS.map(|name| fields.iter().position(|f| f.trim() == name));
    // One buffer for every record's details: no allocation per record.
    let mut details = String::new();

    let mut builder = Builder::new(text.len());
    while let Some(line) = reader.next_record(&mut fields)? {
        if fields.len() != columns {
            let kind = ParseErrorKind::FieldCount {
                expected: columns,
                found: fields.len(),
            };
            return Err(ParseError { line, kind });
        }
        let at_line = |kind| ParseError { line, kind };
        let ports = parse_ports(fields[1].trim()).map_err(at_line)?;
        let transport = match fields[2].trim() {
            "" => None,
            text => Some(text.parse::<Transport>().map_err(at_line)?),
        };
        join_details(&fields, &detail_at, &mut details);
        let record = NewRecord {
            name: fields[0].trim(),
            ports,
            transport,
            description: fields[3].trim(),
            aliases: &[],
            details: &details,
        };
        builder.push(line, record)?;
    }
    Ok(builder.finish())
}

/// Writes the detail columns of `fields` into `out`, separated by
/// `DETAIL_SEPARATOR`; leaves `out` empty when every one is.
fn join_details(fields: &[Cow<'_, str>], detail_at: &[Option<usize>], out: &mut String) {
    out.clear();
    let column = |at: &Option<usize>| at.and_then(|i| fields.get(i)).map_or("", |f| f.trim());
    if detail_at.iter().all(|at| column(at).is_empty()) {
        return;
    }
    for (i, at) in detail_at.iter().enumerate() {
        if i > 0 {
            out.push(DETAIL_SEPARATOR);
        }
        let value = column(at);
        if value.contains(DETAIL_SEPARATOR) {
            out.extend(value.chars().filter(|&c| c != DETAIL_SEPARATOR));
        } else {
            out.push_str(value);
        }
    }
}

/// Parses IANA's port column: empty, `22` or `6000-6063`.
pub(super) fn parse_ports(text: &str) -> Result<Option<PortRange>, ParseErrorKind> {
    if text.is_empty() {
        return Ok(None);
    }
    let port = |t: &str| {
        t.trim().parse::<u16>().map_err(|_| ParseErrorKind::BadPort {
            text: text.to_owned(),
        })
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (port(low)?, port(high)?),
        None => (port(text)?, port(text)?),
    };
    if low > high {
        return Err(ParseErrorKind::ReversedRange { low, high });
    }
    Ok(Some(PortRange { low, high }))
}

/// Splits CSV text into records, counting lines for error messages.
#[derive(Debug)]
pub(super) struct CsvReader<'t> {
    text: &'t str,
    pos: usize,
    /// 1-based line of `pos`.
    line: usize,
}

impl<'t> CsvReader<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        CsvReader {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// Reads the next record into `fields` (cleared first) and returns the
    /// line it starts on; `None` at the end. Blank lines are skipped.
    // All positions sliced at are those of ASCII bytes (`"`, `,`, CR, LF)
    // or the ends of the text, so every slice falls on a char boundary.
    pub(super) fn next_record(
        &mut self,
        fields: &mut Vec<Cow<'t, str>>,
    ) -> Result<Option<usize>, ParseError> {
        fields.clear();
        let bytes = self.text.as_bytes();
        loop {
            match bytes.get(self.pos) {
                None => return Ok(None),
                Some(b'\n') => self.pos += 1,
                Some(b'\r') if matches!(bytes.get(self.pos + 1), Some(b'\n') | None) => self.pos += 1,
                Some(_) => break,
            }
            if bytes.get(self.pos - 1) == Some(&b'\n') {
                self.line += 1;
            }
        }
        let start_line = self.line;
        loop {
            let ended = if bytes.get(self.pos) == Some(&b'"') {
                let field = self.quoted_field()?;
                fields.push(field);
                match bytes.get(self.pos) {
                    None => true,
                    Some(b',') => {
                        self.pos += 1;
                        false
                    }
                    Some(b'\n') => self.end_line(1),
                    Some(b'\r') if bytes.get(self.pos + 1) == Some(&b'\n') => self.end_line(2),
                    Some(_) => {
                        return Err(ParseError {
                            line: self.line,
                            kind: ParseErrorKind::TextAfterQuote,
                        })
                    }
                }
            } else {
                let rest = &bytes[self.pos..];
                let end = rest
                    .iter()
                    .position(|&b| b == b',' || b == b'\n')
                    .map_or(bytes.len(), |i| self.pos + i);
                let value = &self.text[self.pos..end];
                match bytes.get(end) {
                    Some(b',') => {
                        fields.push(Cow::Borrowed(value));
                        self.pos = end + 1;
                        false
                    }
                    _ => {
                        // Last field of the line: drop the CR of a CRLF.
                        fields.push(Cow::Borrowed(value.strip_suffix('\r').unwrap_or(value)));
                        self.pos = end;
                        if end < bytes.len() {
                            self.end_line(1);
                        }
                        true
                    }
                }
            };
            if ended {
                return Ok(Some(start_line));
            }
        }
    }

    fn end_line(&mut self, terminator_len: usize) -> bool {
        self.pos += terminator_len;
        self.line += 1;
        true
    }

    /// Reads a quoted field starting at the opening quote, leaving `pos`
    /// just past the closing quote.
    fn quoted_field(&mut self) -> Result<Cow<'t, str>, ParseError> {
        let bytes = self.text.as_bytes();
        let opened_on = self.line;
        self.pos += 1;
        let mut segment_start = self.pos;
        // Only fields with doubled quotes need a copy.
        let mut unescaped: Option<String> = None;
        loop {
            let Some(offset) = bytes[self.pos..].iter().position(|&b| b == b'"' || b == b'\n') else {
                return Err(ParseError {
                    line: opened_on,
                    kind: ParseErrorKind::UnterminatedQuote,
                });
            };
            let at = self.pos + offset;
            if bytes[at] == b'\n' {
                self.line += 1;
                self.pos = at + 1;
            } else if bytes.get(at + 1) == Some(&b'"') {
                unescaped
                    .get_or_insert_with(String::new)
                    .push_str(&self.text[segment_start..=at]);
                self.pos = at + 2;
                segment_start = self.pos;
            } else {
                self.pos = at + 1;
                let tail = &self.text[segment_start..at];
                return Ok(match unescaped {
                    Some(mut value) => {
                        value.push_str(tail);
                        Cow::Owned(value)
                    }
                    None => Cow::Borrowed(tail),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, ParseError> {
        let mut reader = CsvReader::new(text);
        let mut fields = Vec::new();
        let mut out = Vec::new();
        while let Some(line) = reader.next_record(&mut fields)? {
            out.push((line, fields.iter().map(|f| f.to_string()).collect()));
        }
        Ok(out)
    }

    #[test]
    fn csv_records_table() {
        // (text, [(line, fields)])
        type Case = (&'static str, &'static [(usize, &'static [&'static str])]);
        let cases: &[Case] = &[
            ("", &[]),
            ("\r\n\n", &[]),
            ("a,b,c", &[(1, &["a", "b", "c"])]),
            ("a,b,c\r\n", &[(1, &["a", "b", "c"])]),
            ("a,,\r\n,b,\n", &[(1, &["a", "", ""]), (2, &["", "b", ""])]),
            ("\"x,y\",z\r\n", &[(1, &["x,y", "z"])]),
            ("\"say \"\"hi\"\"\",2", &[(1, &["say \"hi\"", "2"])]),
            ("\"\"", &[(1, &[""])]),
            (
                "\"two\nlines\",b\r\nnext,c\r\n",
                &[(1, &["two\nlines", "b"]), (3, &["next", "c"])],
            ),
            ("a\r\n\r\n\r\nb", &[(1, &["a"]), (4, &["b"])]),
            ("a\"b,c", &[(1, &["a\"b", "c"])]),
            ("é,\"ü\"", &[(1, &["é", "ü"])]),
        ];
        for (text, want) in cases {
            let got = records(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let want: Vec<(usize, Vec<String>)> = want
                .iter()
                .map(|(l, f)| (*l, f.iter().map(|s| s.to_string()).collect()))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn csv_errors_name_the_line() {
        let cases = [
            ("a\r\n\"open,b\r\nc\r\n", 2, ParseErrorKind::UnterminatedQuote),
            ("a\r\nb\r\n\"x\"y,c\r\n", 3, ParseErrorKind::TextAfterQuote),
            ("\"multi\nline\"z", 2, ParseErrorKind::TextAfterQuote),
        ];
        for (text, line, kind) in cases {
            assert_eq!(records(text), Err(ParseError { line, kind }), "{text:?}");
        }
    }

    const HEADER_LINE: &str = "Service Name,Port Number,Transport Protocol,Description,Assignee\r\n";

    #[test]
    fn iana_errors_table() {
        let cases = [
            ("", 1, ParseErrorKind::BadHeader { found: "".into() }),
            (
                "name,port\r\n",
                1,
                ParseErrorKind::BadHeader {
                    found: "name,port".into(),
                },
            ),
            (
                "ssh,22,tcp,SSH\r\n",
                2,
                ParseErrorKind::FieldCount {
                    expected: 5,
                    found: 4,
                },
            ),
            (
                "ssh,22,tcp,SSH,,extra\r\n",
                2,
                ParseErrorKind::FieldCount {
                    expected: 5,
                    found: 6,
                },
            ),
            (
                "ssh,70000,tcp,SSH,\r\n",
                2,
                ParseErrorKind::BadPort { text: "70000".into() },
            ),
            (
                "ssh,22-,tcp,SSH,\r\n",
                2,
                ParseErrorKind::BadPort { text: "22-".into() },
            ),
            (
                "ssh,x,tcp,SSH,\r\n",
                2,
                ParseErrorKind::BadPort { text: "x".into() },
            ),
            (
                "ssh,30-20,tcp,SSH,\r\n",
                2,
                ParseErrorKind::ReversedRange { low: 30, high: 20 },
            ),
            (
                "ssh,22,quic,SSH,\r\n",
                2,
                ParseErrorKind::UnknownTransport { text: "quic".into() },
            ),
            (
                "a,1,tcp,\"d\nd\",\r\nb,2,tcp,\"open,\r\n",
                4,
                ParseErrorKind::UnterminatedQuote,
            ),
        ];
        for (body, line, kind) in cases {
            let text = if body.is_empty() || body.starts_with("name") {
                body.to_owned()
            } else {
                format!("{HEADER_LINE}{body}")
            };
            assert_eq!(
                parse(&text).map(|i| i.len()),
                Err(ParseError { line, kind }),
                "{body:?}"
            );
        }
    }

    #[test]
    fn iana_ports_table() {
        let cases = [
            ("", Ok(None)),
            ("22", Ok(Some(PortRange::single(22)))),
            (
                "6000-6063",
                Ok(Some(PortRange {
                    low: 6000,
                    high: 6063,
                })),
            ),
            ("0-65535", Ok(Some(PortRange { low: 0, high: 65535 }))),
            ("7-7", Ok(Some(PortRange::single(7)))),
            ("65536", Err(ParseErrorKind::BadPort { text: "65536".into() })),
            ("-5", Err(ParseErrorKind::BadPort { text: "-5".into() })),
            ("9-8", Err(ParseErrorKind::ReversedRange { low: 9, high: 8 })),
        ];
        for (text, want) in cases {
            assert_eq!(parse_ports(text), want, "{text:?}");
        }
    }

    #[test]
    fn bom_and_lf_only_files_parse() {
        let text = format!(
            "\u{feff}{}\nssh,22,tcp,SSH,\nhttp,80,tcp,HTTP,\n",
            HEADER_LINE.trim_end()
        );
        assert_eq!(parse(&text).map(|i| i.len()), Ok(2));
    }
}
