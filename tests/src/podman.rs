//! podman as the tests run it: with runc (crun refuses hybrid cgroup
//! hosts), cgroupfs (no systemd needed) and file events (no journald), and
//! containers removed when the test is done.

use std::process::Command;

/// Global flags for every podman call.
const GLOBAL: &[&str] = &[
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--events-backend",
    "file",
];

/// `podman` with the global flags.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(GLOBAL);
    command
}

/// Runs podman with `args`; its standard output, or a panic with its error.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (`cargo xtask setup` installs it): {e}"));
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `--ulimit` flags under this process's hard limits of open files and
/// processes: root here cannot raise them, and podman's defaults would
/// (runc then refuses to start the container). Values close to a hard
/// limit are refused too, so modest ones are asked for.
pub fn ulimits_within_hard_limits() -> Vec<String> {
    let hard = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct given.
        let rc = unsafe { libc::getrlimit(resource, &mut limit) };
        assert_eq!(rc, 0, "getrlimit");
        limit.rlim_max
    };
    let mut flags = Vec::new();
    for (name, resource, wanted) in [
        ("nofile", libc::RLIMIT_NOFILE, 8192),
        ("nproc", libc::RLIMIT_NPROC, 4096),
    ] {
        let value = hard(resource).min(wanted);
        flags.push("--ulimit".to_owned());
        flags.push(format!("{name}={value}:{value}"));
    }
    flags
}

/// A container started by a test, removed (killed first) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run --detach --name NAME --ulimit … ARGS…`.
    pub fn run(name: &str, args: &[String]) -> Self {
        let _ = podman().args(["rm", "--force", "--time", "0", name]).output();
        let mut all = vec!["run".to_owned(), "--detach".into(), "--name".into(), name.into()];
        all.extend(ulimits_within_hard_limits());
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        podman_ok(&all);
        Self {
            name: name.to_owned(),
        }
    }

    /// Its full id (64 hex digits).
    pub fn id(&self) -> String {
        podman_ok(&["inspect", "--format", "{{.Id}}", &self.name])
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        podman_ok(&["inspect", "--format", "{{.State.Running}}", &self.name]) == "true"
    }

    /// Its log so far, for messages.
    pub fn logs(&self) -> String {
        let out = podman().args(["logs", &self.name]).output().map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        out.unwrap_or_else(|e| format!("no logs: {e}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}
