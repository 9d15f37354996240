//! `portmon lookup` as a user runs it: answers from the shared IANA
//! registry, and one clear line plus a non-zero exit for bad input.

use std::process::Command;

const IANA_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/iana/service-names-port-numbers.csv"
);

fn lookup(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portmon"))
        .arg("lookup")
        .args(args)
        .output()
        .expect("run portmon lookup");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn port_name_and_range_queries() {
    let (code, stdout, stderr) = lookup(&["5432", "--registry", IANA_CSV]);
    assert_eq!(code, Some(0), "{stderr}");
    let header = stdout.lines().next().expect("a header line");
    assert!(header.starts_with("PORT  PROTO  CLASS"), "{stdout}");
    assert!(stdout
        .lines()
        .any(|l| l.starts_with("5432  tcp ") && l.contains(" user ") && l.contains("postgresql")));

    let (code, stdout, _) = lookup(&["PostgreSQL", "--registry", IANA_CSV]);
    assert_eq!(code, Some(0));
    assert!(stdout.lines().any(|l| l.starts_with("5432  udp ")), "{stdout}");

    let (code, stdout, stderr) = lookup(&["6000-6010", "--proto", "udp", "--registry", IANA_CSV, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let ports = json["ports"].as_array().expect("a ports array");
    assert_eq!(ports.len(), 11);
    for (row, port) in ports.iter().zip(6000..) {
        assert_eq!(
            (row["port"].as_u64(), row["proto"].as_str()),
            (Some(port), Some("udp"))
        );
        assert_eq!(row["class"], "user");
        assert_eq!(row["services"][0]["name"], "x11");
        assert!(
            row["ephemeral"].is_boolean(),
            "read from this namespace's /proc/sys/net/ipv4"
        );
    }
    assert_eq!(json["registry"]["format"], "iana");
}

#[test]
fn bad_queries_are_usage_errors() {
    let cases = [
        ("70000", "portmon: port 70000 is out of range: ports are 0-65535"),
        (
            "",
            "portmon: empty query: give a port (5432), a range (6000-6010) or a service name (postgresql)",
        ),
        ("10-5", "portmon: range 10-5 is reversed: write 5-10"),
    ];
    for (query, message) in cases {
        let (code, stdout, stderr) = lookup(&[query, "--registry", IANA_CSV]);
        assert_eq!((code, stderr.trim_end()), (Some(64), message), "{query:?}");
        assert!(stdout.is_empty());
    }
}

#[test]
fn registry_problems_are_one_line_failures() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let broken = dir.path().join("broken.csv");
    std::fs::write(
        &broken,
        "Service Name,Port Number,Transport Protocol,Description\r\nssh,22,tcp,\"open\r\n",
    )
    .expect("write a broken registry");
    let missing = dir.path().join("missing.csv");
    let cases = [
        (
            broken.to_str().expect("UTF-8 path"),
            "line 2: quoted field is never closed",
        ),
        (missing.to_str().expect("UTF-8 path"), "No such file or directory"),
    ];
    for (path, reason) in cases {
        let (code, _, stderr) = lookup(&["22", "--registry", path]);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("portmon: cannot load the port registry") && stderr.contains(path),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{stderr}");
    }

    let (code, _, stderr) = lookup(&["no-such-service-name", "--registry", IANA_CSV]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("portmon: no service named \"no-such-service-name\""),
        "{stderr}"
    );
}
