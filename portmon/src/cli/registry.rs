//! `portmon registry …`: placeholder until the registry lands.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Download IANA's registry CSV and replace the local copy atomically.
    Update,
}

pub fn run(_cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("registry update is not built yet")
}
