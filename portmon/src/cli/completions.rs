//! `portmon completions SHELL` and the hidden `portmon manpage`: both drawn
//! from the same clap definition the binary parses with, so neither can
//! drift from the flags it has. The package runs the built binary to make
//! them; the build script cannot (it would have to compile the command
//! line before the crate it is part of).

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "portmon", &mut out);
    write(&out)
}

/// Writes portmon(1) as roff to stdout.
pub fn manpage() -> anyhow::Result<ExitCode> {
    let page = man_page().context("cannot render the man page")?;
    write(page.as_bytes())
}

/// portmon(1): the top-level page clap_mangen renders, with every command's
/// synopsis, description and options in a COMMANDS section of the same
/// page. clap_mangen's own subcommand section points to a page per command
/// (portmon-ports(1), …), which would be nine more files to ship for a
/// tool whose commands fit on one page.
fn man_page() -> std::io::Result<String> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let man = clap_mangen::Man::new(cli.clone());
    let mut page = String::new();
    for section in [
        clap_mangen::Man::render_title,
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ] {
        page.push_str(&roff_of(&man, section)?);
    }
    page.push_str(".SH COMMANDS\n");
    let mut commands = Vec::new();
    leaves(&cli, &mut commands);
    for command in commands {
        let name = command.get_bin_name().unwrap_or_else(|| command.get_name());
        page.push_str(&format!(".SS \"{}\"\n", name.replace('-', "\\-")));
        let man = clap_mangen::Man::new(command.clone());
        for section in [
            clap_mangen::Man::render_synopsis_section,
            clap_mangen::Man::render_description_section,
            clap_mangen::Man::render_options_section,
        ] {
            // Each section's heading becomes a paragraph break: the
            // command's heading stands for them.
            let roff = roff_of(&man, section)?;
            for line in roff.lines() {
                page.push_str(if line.starts_with(".SH ") { ".PP" } else { line });
                page.push('\n');
            }
        }
    }
    page.push_str(&roff_of(&man, clap_mangen::Man::render_version_section)?);
    Ok(format!("{ROFF_PREAMBLE}{page}"))
}

/// What roff writes before every piece it renders: once per page is enough.
const ROFF_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

type Section = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;

fn roff_of(man: &clap_mangen::Man, section: Section) -> std::io::Result<String> {
    let mut out = Vec::new();
    section(man, &mut out)?;
    let text = String::from_utf8(out).map_err(std::io::Error::other)?;
    Ok(text.strip_prefix(ROFF_PREAMBLE).unwrap_or(&text).to_owned())
}

/// The commands a user runs, in order: those without subcommands of their
/// own (`portmon registry update`, not `portmon registry`), hidden ones left out.
fn leaves<'c>(command: &'c clap::Command, out: &mut Vec<&'c clap::Command>) {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.has_subcommands() {
            leaves(sub, out);
        } else {
            out.push(sub);
        }
    }
}

fn write(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(shell: clap_complete::Shell) -> String {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "portmon", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_know_the_subcommands_and_the_short_flags() {
        use clap_complete::Shell;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = render(shell);
            for word in ["ports", "registry", "completions", "listening", "unit"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
        assert!(
            render(Shell::Bash).contains("complete -F _portmon"),
            "bash registers its function"
        );
    }

    #[test]
    fn the_man_page_holds_every_command_with_its_options() {
        let roff = man_page().unwrap();
        assert_eq!(roff.matches(ROFF_PREAMBLE).count(), 1, "{roff}");
        assert!(roff.contains(".TH portmon 1"), "{roff}");
        for heading in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH COMMANDS"] {
            assert_eq!(roff.matches(heading).count(), 1, "{heading}:\n{roff}");
        }
        for command in [
            "portmon ports",
            "portmon check",
            "portmon registry show",
            "portmon completions",
        ] {
            assert!(
                roff.contains(&format!(".SS \"{command}\"")),
                "{command} missing:\n{roff}"
            );
        }
        assert!(roff.contains("\\-\\-listening"), "{roff}");
        assert!(!roff.contains("manpage"), "the hidden subcommand shows:\n{roff}");
        assert!(
            !roff.contains(".SS \"portmon registry\""),
            "only commands one runs:\n{roff}"
        );
    }
}
