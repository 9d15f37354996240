//! `cargo xtask bench`: the benchmarks, each printing its figures beside a
//! baseline measured in the same run.

use anyhow::Result;

use crate::{iana, setup, shell};

pub fn run() -> Result<()> {
    let iana = setup::ensure_for_tests()?;
    let mut registry =
        shell::cargo_command(&["bench", "--locked", "--package", "portmon", "--bench", "registry"]);
    registry.env(iana::VAR, &iana);
    shell::run(registry)?;
    for bench in ["overhead", "scrape"] {
        shell::cargo(&[
            "bench",
            "--locked",
            "--package",
            "portmon-tests",
            "--bench",
            bench,
        ])?;
    }
    Ok(())
}
