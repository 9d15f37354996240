//! `portmon lookup` as a user runs it, answering from the full registry.

use portmon::registry::{Assignment, Transport};

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

#[test]
fn a_de_assigned_port_shows_its_note_and_is_reserved() {
    let Some(iana) = iana() else { return };
    let registry = iana.path.to_str().expect("UTF-8 registry path");
    let (code, stdout, stderr) = lookup(&["10321", "--proto", "tcp", "--registry", registry]);
    assert_eq!(code, Some(0), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("10321  tcp "))
        .unwrap_or_else(|| panic!("no 10321/tcp row: {stdout}"));
    assert!(row.contains(" reserved "), "{row}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim() == "notes: De-Assigned on 2023-12-05."),
        "{stdout}"
    );

    let (_, stdout, _) = lookup(&["10321", "--proto", "tcp", "--registry", registry, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let row = &json["ports"][0];
    assert_eq!(row["assignment"], "reserved");
    assert_eq!(
        row["services"][0]["details"]["notes"],
        "De-Assigned on 2023-12-05."
    );
    assert_eq!(row["services"][0]["details"]["modified"], "2023-12-05");
}

#[test]
fn a_port_with_several_names_shows_them_all_with_their_details() {
    let Some(iana) = iana() else { return };
    let registry = iana.path.to_str().expect("UTF-8 registry path");
    let (code, stdout, stderr) = lookup(&["80", "--proto", "tcp", "--registry", registry, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let row = &json["ports"][0];
    assert_eq!(row["assignment"], "assigned");
    let services = row["services"].as_array().expect("services");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    for name in ["http", "www", "www-http"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let http = services.iter().find(|s| s["name"] == "http").expect("http");
    assert_eq!(http["details"]["assignee"], "[IESG]");
    assert_eq!(http["details"]["contact"], "[IETF_Chair]");
    assert_eq!(http["details"]["reference"], "[RFC9110]");

    let (_, table, _) = lookup(&["80", "--proto", "tcp", "--registry", registry]);
    for name in names {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("80  ") && l.contains(&format!(" {name} "))),
            "{name} has no line: {table}"
        );
    }
    assert!(
        table.contains("assignee: [IESG], contact: [IETF_Chair]"),
        "{table}"
    );
}

#[test]
fn the_dynamic_range_and_unassigned_ports_are_told_apart() {
    let Some(iana) = iana() else { return };
    let cases = [
        (22, Assignment::Assigned),
        (0, Assignment::Reserved),
        (10321, Assignment::Reserved),
        (49152, Assignment::Dynamic),
        (65535, Assignment::Dynamic),
    ];
    for (port, want) in cases {
        assert_eq!(iana.registry.assignment(port, Transport::Tcp), want, "{port}");
    }
    // Some port below 49152 is unassigned in every copy of the registry.
    assert!(
        (1024..49152).any(|p| iana.registry.assignment(p, Transport::Tcp) == Assignment::Unassigned),
        "no unassigned user port"
    );
}
