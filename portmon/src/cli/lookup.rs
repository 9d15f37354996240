//! `portmon lookup`: placeholder until the registry lands.

use std::process::ExitCode;

use clap::Args;

use super::RegistryArgs;

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// A port (5432), a range (6000-6010) or a service name (postgresql).
    pub query: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(_args: LookupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("lookup is not built yet")
}
