//! `portmon registry …`: install IANA's registry, and show which registry
//! portmon would read.
//!
//! Exit codes: 0 on success; 1 (an error returned to `cli::run`) when the
//! download, validation or write fails — the installed file is then
//! unchanged — or when no registry can be loaded.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{lookup::write_stdout, RegistryArgs};
use crate::registry::{
    update::{self, IANA_CSV_URL},
    Registry, DEFAULT_IANA_PATH,
};

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Download IANA's registry CSV, check it is whole, and replace the local
    /// copy atomically (the old copy stays if anything fails).
    Update(UpdateArgs),
    /// Show which registry file portmon reads, its format and size.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// One JSON object (`path`, `format`, `entries`) instead of a line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Where to download the CSV from (https://, or http:// for a local mirror).
    #[arg(long, value_name = "URL", default_value = IANA_CSV_URL)]
    pub url: String,
    /// Where to install it; portmon reads this path by default.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_IANA_PATH)]
    pub output: PathBuf,
}

pub fn run(cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RegistryCommand::Update(args) => {
            let installed = update::update(&args.url, &args.output)
                .with_context(|| format!("registry update failed; {} is unchanged", args.output.display()))?;
            write_stdout(&format!(
                "installed {} ({} records, {} bytes) from {}\n",
                installed.path.display(),
                installed.records,
                installed.bytes,
                args.url
            ))?;
        }
        RegistryCommand::Show(args) => {
            let registry =
                Registry::load(args.registry.registry.as_deref()).context("cannot load the port registry")?;
            let source = registry.source();
            let text = if args.json {
                let object = serde_json::json!({
                    "path": source.path,
                    "format": source.format,
                    "entries": source.entries,
                });
                format!("{object:#}\n")
            } else {
                format!(
                    "{} ({} format, {} entries)\n",
                    source.path.display(),
                    source.format,
                    source.entries
                )
            };
            write_stdout(&text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
