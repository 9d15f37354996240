//! `portmon check`: the preflight alone, then each hook tried on its own,
//! then the kernel features the inventory uses.

use std::process::ExitCode;

use clap::Args;

use super::{init_logging, LogFormat};
use crate::{
    kernel::{
        bpf::{loader::OPTIONAL, Kernel},
        features::{self, Found},
        preflight,
    },
    report::error_line,
};

#[derive(Debug, Args)]
pub struct CheckArgs {}

pub fn run(_args: CheckArgs, log: &str, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log, log_format)?;
    let env = preflight::check()?;
    println!("kernel      {}", env.kernel_release);
    println!(
        "cgroup v2   {}{}",
        env.cgroup_root.display(),
        if env.cgroup_is_subtree { " (subtree)" } else { "" }
    );
    let mut failed = 0;
    for (program, outcome) in Kernel::probe(&env.cgroup_root)? {
        match outcome {
            Ok(target) => println!("ok          {program:<20} {target}"),
            Err(err) if OPTIONAL.contains(&program) => {
                println!("limited     {program:<20} {}", error_line(&err));
            }
            Err(err) => {
                failed += 1;
                println!("FAILED      {program:<20} {}", error_line(&err));
                tracing::debug!("{err:?}");
            }
        }
    }
    for (feature, found) in features::probe() {
        match found {
            Found::Present => println!("ok          {feature}"),
            Found::Limited(why) => println!("limited     {feature:<20} {why}"),
            Found::Missing(why) => {
                failed += 1;
                println!("FAILED      {feature:<20} {}", error_line(&why));
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
