//! `portmon run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;

use super::{init_logging, LogFormat, RegistryArgs, EXIT_USAGE};
use crate::config::{Config, ConfigError};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML; keys are these flags' names). Default:
    /// /etc/portmon/portmon.toml if it exists.
    #[arg(long, value_name = "PATH", env = "PORTMON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP server (/metrics, /healthz, /api/v1/…). Default 127.0.0.1:7455.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: RunArgs, log: &str, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log, log_format)?;
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err @ ConfigError::Parse { .. }) => {
            eprintln!("portmon: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(registry) = args.registry.registry {
        config.registry = Some(registry);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}
