//! The `portmon` binary: parse the command line, set up logging, hand over
//! to the library.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = portmon::cli::Cli::parse();
    portmon::cli::run(cli)
}
