//! The port registry's cost: loading IANA's full CSV, answering (port,
//! protocol) lookups, and the memory it holds, each printed beside a
//! baseline measured in the same run and the target it must meet.
//!
//! Run with `cargo bench -p portmon --bench registry` (release profile);
//! the registry is found as the tests find it (`tests/support/iana.rs`).

use std::{
    collections::HashMap,
    hint::black_box,
    time::{Duration, Instant},
};

use portmon::registry::{Registry, Transport};

#[path = "../tests/support/iana.rs"]
mod source;

const LOAD_RUNS: usize = 11;
const LOOKUPS: usize = 1_000_000;
const LOOKUP_RUNS: usize = 7;

const LOAD_TARGET: Duration = Duration::from_millis(30);
const LOOKUP_TARGET_NS: f64 = 50.0;
/// "At most a few MB".
const HEAP_TARGET_BYTES: usize = 4 << 20;

fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    samples[samples.len() / 2]
}

fn time<R>(runs: usize, mut f: impl FnMut() -> R) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

/// The obvious implementation to compare with: a character-by-character
/// CSV split into owned strings, each range expanded into a `HashMap`.
fn naive_build(text: &str) -> HashMap<(u16, Transport), Vec<String>> {
    let mut records: Vec<Vec<String>> = Vec::new();
    let (mut record, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\r', false) => {}
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (c, _) => field.push(c),
        }
    }
    let mut map: HashMap<(u16, Transport), Vec<String>> = HashMap::new();
    for record in records.iter().skip(1) {
        let (Some(name), Some(ports), Some(proto)) = (record.first(), record.get(1), record.get(2)) else {
            continue;
        };
        let transports = match Transport::from_label(proto) {
            Some(t) => vec![t],
            None => vec![Transport::Tcp, Transport::Udp],
        };
        let (low, high) = ports.split_once('-').unwrap_or((ports, ports));
        let (Ok(low), Ok(high)) = (low.parse::<u16>(), high.parse::<u16>()) else {
            continue;
        };
        for port in low..=high {
            for &t in &transports {
                map.entry((port, t)).or_default().push(name.clone());
            }
        }
    }
    map
}

/// Deterministic keys spread over every port and protocol (xorshift64*).
fn random_keys(n: usize) -> Vec<(u16, Transport)> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            // The registry lists TCP and UDP far more than SCTP and DCCP;
            // so does traffic. Mostly tcp/udp, some of each other.
            let transport = match (r >> 16) % 16 {
                0 => Transport::Sctp,
                1 => Transport::Dccp,
                n if n % 2 == 0 => Transport::Tcp,
                _ => Transport::Udp,
            };
            ((r >> 40) as u16, transport)
        })
        .collect()
}

fn main() {
    let path = source::locate_for_this_binary().unwrap_or_else(|missing| {
        eprintln!("registry bench: {missing}");
        std::process::exit(1)
    });
    let path = path.as_path();
    let file_bytes = std::fs::metadata(path)
        .map(|m| m.len())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    let read = time(LOAD_RUNS, || {
        std::fs::read_to_string(path).expect("read the registry")
    });
    let load = time(LOAD_RUNS, || {
        Registry::from_file(path).expect("load the registry")
    });
    let naive = time(LOAD_RUNS, || {
        naive_build(&std::fs::read_to_string(path).expect("read the registry"))
    });
    println!(
        "registry load: {:.2} ms (file read {:.2} ms, ratio {:.1}x); naive HashMap build {:.2} ms \
         (ratio {:.2}x); median of {LOAD_RUNS}; target < {} ms: {}",
        ms(load),
        ms(read),
        ms(load) / ms(read),
        ms(naive),
        ms(load) / ms(naive),
        LOAD_TARGET.as_millis(),
        verdict(load < LOAD_TARGET)
    );

    let registry = Registry::from_file(path).expect("load the registry");
    let keys = random_keys(LOOKUPS);
    let baseline: HashMap<(u16, Transport), String> = Transport::ALL
        .into_iter()
        .flat_map(|t| (0..=u16::MAX).map(move |p| (p, t)))
        .filter_map(|(p, t)| registry.service_name(p, t).map(|name| ((p, t), name.to_owned())))
        .collect();
    let per_lookup = |d: Duration| d.as_secs_f64() * 1e9 / LOOKUPS as f64;
    let registry_ns = per_lookup(time(LOOKUP_RUNS, || {
        keys.iter()
            .map(|&(p, t)| {
                registry
                    .service_name(black_box(p), black_box(t))
                    .map_or(0, str::len)
            })
            .sum::<usize>()
    }));
    let hashmap_ns = per_lookup(time(LOOKUP_RUNS, || {
        keys.iter()
            .map(|key| baseline.get(black_box(key)).map_or(0, String::len))
            .sum::<usize>()
    }));
    let hits = keys
        .iter()
        .filter(|&&(p, t)| registry.service_name(p, t).is_some())
        .count();
    println!(
        "registry lookup: {registry_ns:.1} ns per lookup (std HashMap {hashmap_ns:.1} ns, ratio {:.2}x); \
         {LOOKUPS} random (port, proto) keys, {:.0}% named; target < {LOOKUP_TARGET_NS} ns: {}",
        registry_ns / hashmap_ns,
        hits as f64 * 100.0 / LOOKUPS as f64,
        verdict(registry_ns < LOOKUP_TARGET_NS)
    );

    let heap = registry.heap_size();
    println!(
        "registry size: {heap} bytes ({:.2} MiB) on the heap for {} records (file {file_bytes} bytes, \
         ratio {:.1}x); target <= {} MiB: {}",
        heap as f64 / (1 << 20) as f64,
        registry.len(),
        heap as f64 / file_bytes as f64,
        HEAP_TARGET_BYTES >> 20,
        verdict(heap <= HEAP_TARGET_BYTES)
    );
}
