//! `portmon check`: the preflight alone, then each hook tried on its own,
//! then the kernel features the inventory uses; as lines, or with `--json`
//! as one object for configuration management.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{init_logging, lookup::write_stdout, LogFormat};
use crate::{
    kernel::{
        bpf::{programs::OPTIONAL, Kernel},
        features::{self, Found},
        preflight,
    },
    report::error_line,
};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// One JSON object (kernel, cgroup, every check with its status and
    /// detail) instead of lines; the exit code is the same.
    #[arg(long)]
    pub json: bool,
}

/// Everything `portmon check` found.
#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    cgroup_root: String,
    cgroup_subtree: bool,
    checks: Vec<Check>,
    failed: usize,
}

/// One program or feature tried.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    kind: Kind,
    status: Status,
    /// Where a program attached, or what is limited or missing and the fix.
    detail: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Program,
    Feature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Limited,
    Failed,
}

pub fn run(args: CheckArgs, log: &str, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log, log_format)?;
    let env = preflight::check()?;
    let mut checks = Vec::new();
    for (program, outcome) in Kernel::probe(&env.cgroup_root)? {
        let (status, detail) = match outcome {
            Ok(target) => (Status::Ok, target),
            Err(err) if OPTIONAL.contains(&program) => (Status::Limited, error_line(&err)),
            Err(err) => {
                tracing::debug!("{err:?}");
                (Status::Failed, error_line(&err))
            }
        };
        checks.push(Check {
            name: program,
            kind: Kind::Program,
            status,
            detail,
        });
    }
    for (feature, found) in features::probe() {
        let (status, detail) = match found {
            Found::Present => (Status::Ok, String::new()),
            Found::Limited(why) => (Status::Limited, why.to_string()),
            Found::Missing(why) => (Status::Failed, error_line(&why)),
        };
        checks.push(Check {
            name: feature,
            kind: Kind::Feature,
            status,
            detail,
        });
    }
    let failed = checks.iter().filter(|c| c.status == Status::Failed).count();
    let report = Report {
        kernel: env.kernel_release,
        cgroup_root: env.cgroup_root.display().to_string(),
        cgroup_subtree: env.cgroup_is_subtree,
        checks,
        failed,
    };
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        text
    } else {
        lines(&report)
    };
    write_stdout(&text)?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn lines(report: &Report) -> String {
    let mut text = format!("kernel      {}\n", report.kernel);
    text.push_str(&format!(
        "cgroup v2   {}{}\n",
        report.cgroup_root,
        if report.cgroup_subtree { " (subtree)" } else { "" }
    ));
    for check in &report.checks {
        let status = match check.status {
            Status::Ok => "ok",
            Status::Limited => "limited",
            Status::Failed => "FAILED",
        };
        let line = if check.detail.is_empty() {
            format!("{status:<11} {}", check.name)
        } else {
            format!("{status:<11} {:<20} {}", check.name, check.detail)
        };
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            kernel: "6.18.1".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_subtree: false,
            checks: vec![
                Check {
                    name: "post_bind4",
                    kind: Kind::Program,
                    status: Status::Ok,
                    detail: "cgroup /sys/fs/cgroup".into(),
                },
                Check {
                    name: "netns cookie",
                    kind: Kind::Feature,
                    status: Status::Ok,
                    detail: String::new(),
                },
                Check {
                    name: "bound-inactive",
                    kind: Kind::Feature,
                    status: Status::Limited,
                    detail: "older kernel".into(),
                },
            ],
            failed: 0,
        }
    }

    #[test]
    fn lines_keep_the_layout_scripts_read() {
        let text = lines(&report());
        let want = "kernel      6.18.1\n\
                    cgroup v2   /sys/fs/cgroup\n\
                    ok          post_bind4           cgroup /sys/fs/cgroup\n\
                    ok          netns cookie\n\
                    limited     bound-inactive       older kernel\n";
        assert_eq!(text, want);
    }

    #[test]
    fn json_names_every_check_with_its_kind_and_status() {
        let value = serde_json::to_value(report()).unwrap();
        assert_eq!(value["kernel"], "6.18.1");
        assert_eq!(value["failed"], 0);
        assert_eq!(value["checks"][0]["kind"], "program");
        assert_eq!(value["checks"][2]["status"], "limited");
        assert_eq!(value["checks"][2]["detail"], "older kernel");
    }
}
