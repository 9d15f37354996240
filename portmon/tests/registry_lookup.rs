//! `portmon lookup` as a user runs it: one clear line plus a non-zero exit
//! for bad input or a registry it cannot use. (Its answers from the full
//! IANA registry are tested in `registry_iana/lookup.rs`.)

use std::path::PathBuf;

use tempfile::TempDir;

#[path = "support/lookup.rs"]
mod cli;
use cli::lookup;

/// A small IANA-format registry in a temporary directory.
fn small_registry() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("service-names-port-numbers.csv");
    std::fs::write(
        &path,
        "Service Name,Port Number,Transport Protocol,Description\r\n\
         ssh,22,tcp,The Secure Shell (SSH) Protocol\r\n\
         postgresql,5432,tcp,PostgreSQL Database\r\n",
    )
    .expect("write a small registry");
    (dir, path)
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
    let (_dir, registry) = small_registry();
    let registry = registry.to_str().expect("UTF-8 temporary path");
    for (query, message) in cases {
        let (code, stdout, stderr) = lookup(&[query, "--registry", registry]);
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

    let (_dir, registry) = small_registry();
    let registry = registry.to_str().expect("UTF-8 temporary path");
    let (code, _, stderr) = lookup(&["no-such-service-name", "--registry", registry]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("portmon: no service named \"no-such-service-name\""),
        "{stderr}"
    );
}
