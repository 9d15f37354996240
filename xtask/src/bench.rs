//! `cargo xtask bench`: the benchmarks, each printing its figures beside a
//! baseline measured in the same run.

use anyhow::Result;

use crate::{setup, shell};

pub fn run() -> Result<()> {
    setup::ensure()?;
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
