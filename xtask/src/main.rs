//! portmon's developer commands. Each installs what it needs first, so a
//! fresh machine of the project's kind needs nothing done by hand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod fuzz;
mod iana;
mod image;
mod setup;
mod shell;
mod test;
mod vm;

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
    /// integration tests (the latter need root), then `vm-test`.
    Test,
    /// Install what is missing, then run the integration tests on Debian's
    /// cloud kernels, each booted in QEMU (needs root for `apt-get`).
    VmTest {
        /// Kernels to boot: `6.1`, `6.12` (Debian's current ones of that
        /// line), an exact version (`6.1.0-50`, `6.12.100`) or a package
        /// name; by default Debian 12's 6.1 and bookworm-security's 6.12.
        #[arg(long = "kernel", num_args = 1.., value_name = "VERSION")]
        kernels: Vec<String>,
        /// Seconds a guest gets, boot to power-off, before it is killed.
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
        timeout: u64,
    },
    /// Run a part of the scrape benchmark in a guest (see `vm-test`), for
    /// what the host's kernel cannot show (needs root).
    VmBench {
        /// Kernel to boot, as for `vm-test`.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// `PORTMON_SCRAPE_BENCH`: `namespaces` (one namespace against
        /// many) or `one`.
        #[arg(long, default_value = "namespaces")]
        part: String,
        /// Seconds the guest gets, boot to power-off.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Install what is missing, then run the benchmarks (needs root).
    Bench,
    /// Install the build and test dependencies only (IANA's registry for
    /// the tests included).
    Setup,
    /// Install cargo-fuzz if missing, then run each fuzz target of `fuzz/`
    /// (all of them unless named) from its committed seeds.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (`sock_diag`, `btf`, …); all when none.
        targets: Vec<String>,
    },
    /// Build the Debian package (cargo-deb) and the tarball (binary, systemd
    /// unit, default config, dashboard, alert rules, man page, completions)
    /// into <target dir>/dist/.
    Dist,
    /// Build the container image `portmon:<version>` (the release binary,
    /// its libraries and /etc/services, from scratch) into podman's storage,
    /// offline, with buildah.
    Image,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run { args } => run(&args),
        Command::Test => test::run(),
        Command::VmTest { kernels, timeout } => {
            setup::ensure_for_tests().and_then(|_| vm::run(&kernels, std::time::Duration::from_secs(timeout)))
        }
        Command::VmBench {
            kernel,
            part,
            timeout,
        } => setup::ensure_for_tests()
            .and_then(|_| vm::bench::run(&kernel, &part, std::time::Duration::from_secs(timeout))),
        Command::Bench => bench::run(),
        Command::Setup => setup::ensure_for_tests().map(drop),
        Command::Dist => dist::run(),
        Command::Fuzz { seconds, targets } => fuzz::run(&targets, std::time::Duration::from_secs(seconds)),
        Command::Image => image::run(),
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
