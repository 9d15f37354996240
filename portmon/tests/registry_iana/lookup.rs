//! `portmon lookup` as a user runs it, answering from the full registry.

use crate::{cli::lookup, iana};

#[test]
fn port_name_and_range_queries() {
    let Some(iana) = iana() else { return };
    let registry = iana.path.to_str().expect("UTF-8 registry path");
    let (code, stdout, stderr) = lookup(&["5432", "--registry", registry]);
    assert_eq!(code, Some(0), "{stderr}");
    let header = stdout.lines().next().expect("a header line");
    assert!(header.starts_with("PORT  PROTO  CLASS"), "{stdout}");
    assert!(stdout
        .lines()
        .any(|l| l.starts_with("5432  tcp ") && l.contains(" user ") && l.contains("postgresql")));

    let (code, stdout, _) = lookup(&["PostgreSQL", "--registry", registry]);
    assert_eq!(code, Some(0));
    assert!(stdout.lines().any(|l| l.starts_with("5432  udp ")), "{stdout}");

    let (code, stdout, stderr) = lookup(&["6000-6010", "--proto", "udp", "--registry", registry, "--json"]);
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
