//! `portmon lookup` run as a user runs it, for the tests that check its
//! answers and its errors.

use std::process::Command;

/// The exit code, standard output and standard error of `portmon lookup ARGS`.
pub fn lookup(args: &[&str]) -> (Option<i32>, String, String) {
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
