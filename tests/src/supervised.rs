//! `portmon run` as a service manager runs it: optionally under `setpriv`
//! with the unit's user and capabilities, with a real `NOTIFY_SOCKET` the
//! test reads, and its log captured to a file.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The unit file in the repository.
pub fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/portmon.service")
}

/// Every value of `key=` in a unit file's text, split on spaces, in order.
pub fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// `setpriv` arguments that give a process exactly `caps` (unit spelling,
/// `CAP_BPF`) as user `user`, with no way to gain more — what systemd does
/// for `User=`, `AmbientCapabilities=`, `CapabilityBoundingSet=` and
/// `NoNewPrivileges=`.
pub fn setpriv_args(user: &str, caps: &[String]) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        format!("--reuid={user}"),
        format!("--regid={user}"),
        "--init-groups".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// A daemon started with a notification socket; killed on drop if running.
#[derive(Debug)]
pub struct Supervised {
    pub child: Child,
    notify: UnixDatagram,
    dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Supervised {
    /// Runs `program args…` (e.g. `setpriv … -- portmon run …`) with
    /// `NOTIFY_SOCKET` pointing at a socket anyone may write to.
    pub fn spawn(tag: &str, program: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("portmon-supervised-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        // The daemon may run as another user: it must reach the socket.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let socket_path = dir.join("notify");
        let notify = UnixDatagram::bind(&socket_path).expect("bind notify socket");
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o777)).expect("chmod socket");
        let log = dir.join("stderr.log");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Self {
            child,
            notify,
            dir,
            log,
        }
    }

    /// The next notification that contains `key`, skipping others.
    pub fn wait_for(&mut self, key: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("portmon exited early ({status}):\n{}", self.log_text());
            }
            let _ = self
                .notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))));
            if let Ok(n) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.lines().any(|l| l.starts_with(key)) {
                    return Some(message);
                }
            }
        }
        None
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `CapEff`/`CapPrm` of every thread, as hex text.
    pub fn thread_capabilities(&self) -> Vec<(String, String)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks)
            .expect("task dir")
            .flatten()
            .map(|t| {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or("?")
                        .trim()
                        .to_owned()
                };
                (field("CapEff:"), field("CapPrm:"))
            })
            .collect()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
