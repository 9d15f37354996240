//! `cargo xtask fuzz`: runs each cargo-fuzz target of `fuzz/` for a while,
//! starting from the committed seeds (`fuzz/seeds/<target>/`, read only)
//! and growing a corpus under the target directory, and prints how many
//! inputs each ran. A crash stops it with the input's path: minimise it
//! (`cargo fuzz tmin`), fix the parser, and commit the input under
//! `fuzz/seeds/<target>/`, where the unit tests replay it.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{setup, shell};

/// The cargo-fuzz release this project runs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target, as `fuzz/Cargo.toml` lists them.
pub fn targets() -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(shell::workspace_root().join("fuzz/Cargo.toml"))
        .context("cannot read fuzz/Cargo.toml")?;
    Ok(manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|name| *name != "portmon-fuzz")
        .map(str::to_owned)
        .collect())
}

/// Runs `names` (every target when empty) for `time` each.
pub fn run(names: &[String], time: Duration) -> Result<()> {
    setup::ensure()?;
    ensure_cargo_fuzz()?;
    let all = targets()?;
    let chosen: Vec<&String> = if names.is_empty() {
        all.iter().collect()
    } else {
        names.iter().collect()
    };
    if let Some(unknown) = chosen.iter().find(|n| !all.contains(n)) {
        bail!("no fuzz target `{unknown}`: the targets are {}", all.join(", "));
    }
    let toolchain = nightly()?;
    let root = shell::workspace_root();
    let work = shell::target_dir().join("fuzz");
    let mut totals = Vec::new();
    for name in chosen {
        let corpus = work.join("corpus").join(name);
        let artifacts = work.join("artifacts").join(name);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let mut fuzz = Command::new("cargo");
        fuzz.current_dir(root.join("fuzz"))
            .env("RUSTUP_TOOLCHAIN", &toolchain)
            .env("CARGO_TARGET_DIR", work.join("build"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["fuzz", "run", name])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(name))
            .arg("--")
            .arg(format!("-max_total_time={}", time.as_secs().max(1)))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // Parsers of small files and datagrams: bigger inputs only slow
            // the search down.
            .arg("-max_len=65536")
            .arg("-print_final_stats=1")
            .stderr(Stdio::piped());
        println!("xtask: fuzzing {name} for {} s", time.as_secs());
        let out = fuzz
            .spawn()
            .context("cannot run cargo fuzz")?
            .wait_with_output()?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            bail!(
                "fuzz target {name} failed ({}): its input is under {}",
                out.status,
                artifacts.display()
            );
        }
        let runs = executions(&log);
        if let Some(runs) = runs {
            println!("xtask: {name}: {runs} executions, no crash");
        }
        totals.push((name.clone(), runs));
    }
    println!("xtask: fuzzing done, no crash:");
    for (name, runs) in totals {
        match runs {
            Some(runs) => println!("  {name:<16} {runs:>12} executions"),
            None => println!("  {name:<16} (libFuzzer printed no count)"),
        }
    }
    Ok(())
}

/// libFuzzer's final `stat::number_of_executed_units: N`.
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .find_map(|n| n.trim().parse().ok())
}

/// The nightly pinned for the kernel crate: cargo-fuzz needs one (for
/// `-Z sanitizer`), and one pinned nightly is enough for the project.
fn nightly() -> Result<String> {
    let file = shell::workspace_root().join("portmon-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|l| l.trim().strip_prefix('='))
        .map(|l| l.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no channel in {}", file.display()))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let version = shell::output("cargo", &["fuzz", "--version"]).unwrap_or_default();
    if version.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    shell::cargo(&[
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_executions_of_a_run() {
        let log = "#1000 DONE cov: 10\nstat::number_of_executed_units: 1234567\nstat::peak_rss_mb: 40\n";
        assert_eq!(executions(log), Some(1_234_567));
        assert_eq!(executions("crash"), None);
    }

    #[test]
    fn every_target_has_seeds() {
        let targets = targets().unwrap();
        assert!(targets.len() >= 8, "{targets:?}");
        for name in targets {
            let seeds = shell::workspace_root().join("fuzz/seeds").join(&name);
            assert!(
                seeds.read_dir().is_ok_and(|mut d| d.next().is_some()),
                "{} is empty",
                seeds.display()
            );
        }
    }
}
