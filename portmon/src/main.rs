//! The `portmon` binary: parse the command line, set up logging, hand over
//! to the library.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    match portmon::cli::Cli::try_parse() {
        Ok(cli) => portmon::cli::run(cli),
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            ExitCode::SUCCESS
        }
        Err(err) => {
            // clap's first line says what is wrong; the rest points to --help.
            let text = err.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            eprintln!("portmon: {first} (see portmon --help)");
            ExitCode::from(portmon::cli::EXIT_USAGE)
        }
    }
}
