//! portmon's developer commands. Each installs what it needs first, so a
//! fresh machine of the project's kind needs nothing done by hand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod iana;
mod setup;
mod shell;
mod test;

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what is missing, build, and run `portmon run` in the foreground.
    Run {
        /// Arguments passed to `portmon run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what is missing, then run every check: fmt, clippy, unit and
    /// integration tests (the latter need root).
    Test,
    /// Install what is missing, then run the benchmarks (needs root).
    Bench,
    /// Install the build and test dependencies only (IANA's registry for
    /// the tests included).
    Setup,
    /// Build the Debian package and the tarball (binary, systemd unit,
    /// default config, dashboard, alert rules) into <target dir>/dist/.
    Dist,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run { args } => run(&args),
        Command::Test => test::run(),
        Command::Bench => bench::run(),
        Command::Setup => setup::ensure_for_tests().map(drop),
        Command::Dist => dist::run(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    shell::cargo(&["build", "--release", "--locked", "--package", "portmon"])?;
    let binary = shell::workspace_root().join("target/release/portmon");
    let mut command = std::process::Command::new(binary);
    command.arg("run").args(args);
    shell::exec(command)
}
