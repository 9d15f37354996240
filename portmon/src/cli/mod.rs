//! The command line: one subcommand per job, each in its own file.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

mod check;
mod completions;
mod daemon_args;
mod doctor;
mod lookup;
mod ports;
mod registry;
mod run;
mod table;

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Live port monitoring for Linux: every bind() and connect(), through eBPF.
#[derive(Debug, Parser)]
#[command(name = "portmon", version, about)]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `portmon=debug`.
    #[arg(long, global = true, env = "PORTMON_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, global = true, env = "PORTMON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
    /// Native journal entries with every field kept (`journalctl -o verbose`
    /// shows them); JSON on stderr when the journal is not reachable.
    Journald,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs and serve metrics until stopped.
    Run(run::RunArgs),
    /// Check privileges and kernel features, and whether each hook attaches here.
    Check(check::CheckArgs),
    /// The sockets holding ports, like `ss`, with IANA class and service.
    Ports(ports::PortsArgs),
    /// What is wrong with this host's ports, most urgent first, with evidence
    /// and the fix; exit status 0 (nothing urgent), 1 (warnings), 2 (critical).
    Doctor(doctor::DoctorArgs),
    /// What a port (or range, or service name) means: IANA class, service, host range.
    Lookup(lookup::LookupArgs),
    /// Manage the IANA registry file.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Print a shell completion script: `source <(portmon completions bash)`.
    Completions(completions::CompletionsArgs),
    /// Print the manual page portmon(1) as roff (the package installs it).
    #[command(hide = true)]
    Manpage,
}

/// Where the port registry comes from; shared by every command that uses it.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Registry file: IANA's CSV or /etc/services format, detected from its
    /// content. Default: /var/lib/portmon/service-names-port-numbers.csv if
    /// present, else /etc/services.
    #[arg(long, value_name = "PATH")]
    pub registry: Option<PathBuf>,
}

/// Runs a parsed command line and turns its outcome into an exit code,
/// printing any error as one line.
pub fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Run(args) => run::run(args, &cli.log, cli.log_format),
        Command::Check(args) => check::run(args, &cli.log, cli.log_format),
        Command::Lookup(args) => lookup::run(args),
        Command::Ports(args) => ports::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Registry(cmd) => registry::run(cmd),
        Command::Completions(args) => completions::completions(args),
        Command::Manpage => completions::manpage(),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("portmon: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging once for the commands that log.
pub fn init_logging(filter_text: &str, format: LogFormat) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter_text)
        .with_context(|| format!("bad --log filter {filter_text:?}: try `info` or `portmon=debug`"))?;
    // Colours only for a person at a terminal: a file or a pipe gets the
    // bare text that grep and log shippers read.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => {
                use tracing_subscriber::layer::SubscriberExt as _;
                use tracing_subscriber::util::SubscriberInitExt as _;
                let filter = tracing_subscriber::EnvFilter::try_new(filter_text)
                    .with_context(|| format!("bad --log filter {filter_text:?}"))?;
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("portmon".to_owned()))
                    .try_init()
                    .map_err(Into::into)
            }
            Err(err) => {
                let result = builder.json().flatten_event(true).try_init();
                tracing::warn!("the journal is not reachable ({err}): logging JSON to stderr");
                result
            }
        },
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
