//! `portmon registry update` end to end against a local HTTP server: a
//! whole registry is installed; a truncated, garbage, short or missing one
//! (or an unreachable server) fails and leaves the previous file byte for
//! byte, with no temporary file behind.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    sync::OnceLock,
};

use portmon::registry::{
    update::{self, UpdateError, MIN_RECORDS},
    Format, Registry,
};

/// The whole registry the server hands out; every test that asks for it
/// has checked that there is one.
fn full_csv() -> &'static [u8] {
    crate::iana().map_or(&[], |iana| iana.text.as_bytes())
}

/// What the server answers on a path.
struct Reply {
    status: &'static str,
    body: Vec<u8>,
    /// Announce this many more bytes than are sent, then close.
    missing: usize,
}

fn reply_for(path: &str) -> Reply {
    let full = full_csv();
    let ok = |body: Vec<u8>| Reply {
        status: "200 OK",
        body,
        missing: 0,
    };
    match path {
        "/full.csv" => ok(full.to_vec()),
        // Cut in the middle of a record.
        "/cut.csv" => ok(full[..full.len() / 2 + 17].to_vec()),
        // Cut at a record boundary: parses, but is far too short.
        "/head.csv" => {
            let end = full
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w == b"\r\n")
                .nth(2000)
                .map(|(i, _)| i + 2);
            ok(full[..end.unwrap_or(full.len())].to_vec())
        }
        "/garbage.csv" => {
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let bytes = (0..200_000)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            ok(bytes)
        }
        "/page.html" => ok(b"<!doctype html><title>Service Name Registry</title>".to_vec()),
        "/short.csv" => Reply {
            status: "200 OK",
            body: full[..full.len() / 3].to_vec(),
            missing: 1000,
        },
        _ => Reply {
            status: "404 Not Found",
            body: b"not found".to_vec(),
            missing: 0,
        },
    }
}

/// A one-thread HTTP/1.1 server for the test process's lifetime.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(&stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip the headers; nothing in them matters here.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let reply = reply_for(&path);
                let head = format!(
                    "HTTP/1.1 {}\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.status,
                    reply.body.len() + reply.missing
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&reply.body));
            }
        });
        addr
    })
}

fn url(path: &str) -> String {
    format!("http://{}{path}", server())
}

/// A URL nothing listens on: a port just bound and released.
fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{addr}/full.csv")
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the output directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn whole_registry_is_installed() {
    if crate::iana().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = dir.path().join("lib/portmon/service-names-port-numbers.csv");
    let installed = update::update(&url("/full.csv"), &output).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(std::fs::read(&output).expect("installed file"), full_csv());
    assert_eq!(installed.bytes, full_csv().len());
    assert!(installed.records >= MIN_RECORDS);

    let registry = Registry::from_file(&output).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(registry.source().format, Format::IanaCsv);
    assert_eq!(registry.len(), installed.records);
    assert_eq!(
        dir_entries(output.parent().expect("parent")),
        ["service-names-port-numbers.csv"]
    );

    // A second update over the first replaces it the same way.
    update::update(&url("/full.csv"), &output).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(std::fs::read(&output).expect("installed file"), full_csv());
}

#[test]
fn failures_leave_the_old_file_untouched() {
    if crate::iana().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = dir.path().join("service-names-port-numbers.csv");
    let old = b"the previous registry, whatever it held\r\n";
    std::fs::write(&output, old).expect("write the old file");

    /// A URL and the error it must give.
    type Case = (String, fn(&UpdateError) -> bool);
    let cases: [Case; 8] = [
        // Depending on where the cut falls, the last record is malformed or
        // merely the last of too few.
        (url("/cut.csv"), |e| {
            matches!(e, UpdateError::Invalid { .. } | UpdateError::TooFewRecords { .. })
        }),
        (url("/head.csv"), |e| {
            matches!(e, UpdateError::TooFewRecords { records: 2000, .. })
        }),
        (url("/garbage.csv"), |e| matches!(e, UpdateError::Invalid { .. })),
        (url("/page.html"), |e| matches!(e, UpdateError::Invalid { .. })),
        (url("/short.csv"), |e| matches!(e, UpdateError::Download { .. })),
        (url("/missing.csv"), |e| matches!(e, UpdateError::Download { .. })),
        (unreachable_url(), |e| matches!(e, UpdateError::Download { .. })),
        ("ftp://127.0.0.1/full.csv".to_owned(), |e| {
            matches!(e, UpdateError::UnsupportedUrl { .. })
        }),
    ];
    for (url, expected) in cases {
        let err = update::update(&url, &output).expect_err(&url);
        assert!(expected(&err), "{url}: unexpected error {err:#?}");
        assert_eq!(std::fs::read(&output).expect("old file"), old, "{url}");
        assert_eq!(
            dir_entries(dir.path()),
            ["service-names-port-numbers.csv"],
            "{url}"
        );
    }
}

fn portmon(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portmon"))
        .args(args)
        .output()
        .expect("run portmon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn command_reports_success_and_failure() {
    if crate::iana().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = dir.path().join("registry.csv");
    let output_arg = output.to_str().expect("UTF-8 temporary path");

    let (code, stdout, stderr) = portmon(&[
        "registry",
        "update",
        "--url",
        &url("/full.csv"),
        "--output",
        output_arg,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with(&format!("installed {output_arg} (")),
        "{stdout}"
    );

    let (code, stdout, stderr) = portmon(&["registry", "show", "--registry", output_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("(iana format, "), "{stdout}");

    for path in ["/garbage.csv", "/head.csv", "/missing.csv"] {
        let (code, _, stderr) = portmon(&["registry", "update", "--url", &url(path), "--output", output_arg]);
        assert_eq!(code, Some(1), "{path}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{path}: one line, got {stderr}");
        assert!(stderr.starts_with(&format!(
            "portmon: registry update failed; {output_arg} is unchanged: "
        )));
        assert_eq!(
            std::fs::read(&output).expect("installed file"),
            full_csv(),
            "{path}"
        );
    }
}
