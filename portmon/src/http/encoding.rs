//! gzip for clients that ask for it: Prometheus sends
//! `Accept-Encoding: gzip` with every scrape, and an exposition shrinks
//! about tenfold.

use std::io::Write as _;

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};

/// Bodies smaller than this go as they are: gzip would barely shrink them.
const MIN_COMPRESSED: usize = 1024;

/// Whether an `Accept-Encoding` value accepts gzip (a `q=0` refuses it).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// `body` gzipped, or `None` when it is too small to be worth it.
pub fn gzip(body: &[u8]) -> Option<Bytes> {
    if body.len() < MIN_COMPRESSED {
        return None;
    }
    // Fast: a scrape is on the clock, and level 1 already takes most of it.
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder.write_all(body).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_values() {
        let cases = [
            ("gzip", true),
            ("identity", false),
            ("", false),
            ("deflate, GZIP", true),
            ("gzip;q=0", false),
            ("gzip; q=0.5, identity", true),
            ("*", true),
            ("br;q=1.0, gzip;q=0.0", false),
        ];
        for (value, want) in cases {
            assert_eq!(accepts_gzip(value), want, "{value:?}");
        }
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = "portmon_sockets 1\n".repeat(200);
        let packed = gzip(body.as_bytes()).expect("large enough");
        assert!(packed.len() < body.len() / 4);
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_string(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, body);
        assert_eq!(gzip(b"small"), None);
    }
}
