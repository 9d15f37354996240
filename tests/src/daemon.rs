//! The `portmon` binary run as a daemon by the tests: built once (or
//! prebuilt, in a `cargo xtask vm-test` guest), started, asked over HTTP,
//! and stopped.

use crate::wait_until;
use std::{io, path::PathBuf, process::Command, sync::OnceLock, time::Duration};

/// Names a prebuilt `portmon` binary for [`portmon_bin`]: a guest of
/// `cargo xtask vm-test` has no cargo to build one.
pub const BIN_VAR: &str = "PORTMON_BIN";

/// The `portmon` binary: the one [`BIN_VAR`] names, else built once per test
/// run with the same profile.
pub fn portmon_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(prebuilt) = std::env::var_os(BIN_VAR).filter(|v| !v.is_empty()) {
            return PathBuf::from(prebuilt);
        }
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/integration-… → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target dir")
            .to_owned();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--package", "portmon", "--bin", "portmon"]);
        // What cargo set for this binary (the package's name, version and
        // directory) must not reach the build: build scripts that watch
        // these variables (ring's) would run again, and the crates after
        // them be built again, at every test run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || key == "CARGO_CRATE_NAME"
            {
                cargo.env_remove(&*key);
            }
        }
        if release {
            cargo.arg("--release");
        }
        if let Some(target_dir) = profile_dir.parent() {
            cargo.arg("--target-dir").arg(target_dir);
        }
        let status = cargo.status().expect("run cargo to build the portmon binary");
        assert!(status.success(), "building the portmon binary failed");
        profile_dir.join("portmon")
    })
    .clone()
}

/// `portmon ports ARGS`'s standard output; it must succeed. No config from
/// the environment: the test says where the daemon is.
pub fn portmon_ports(args: &[&str]) -> String {
    let out = Command::new(portmon_bin())
        .arg("ports")
        .args(args)
        .env_remove("PORTMON_CONFIG")
        .output()
        .expect("run portmon ports");
    assert!(
        out.status.success(),
        "portmon ports {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A GET over real HTTP: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> io::Result<(u16, String)> {
    portmon::http::get(addr, path, Duration::from_secs(10)).map_err(io::Error::other)
}

/// A `portmon run` child process, stopped (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    home: Home,
}

/// The network namespace a server was started from, so that a test thread
/// that entered another one can still reach it.
#[derive(Debug)]
pub(crate) struct Home(std::fs::File);

impl Home {
    pub(crate) fn here() -> Self {
        Self(std::fs::File::open("/proc/thread-self/ns/net").expect("own netns"))
    }

    pub(crate) fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd as _;
        let path = PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()));
        portmon::kernel::netns::run_in(&path, work).expect("enter the test's own netns")
    }
}

impl Daemon {
    /// Starts `portmon run` on `addr` with extra arguments, and waits for
    /// `/healthz` to answer.
    pub fn start(addr: std::net::SocketAddr, extra: &[&str]) -> Self {
        Self::start_when(addr, extra, || matches!(http_get(addr, "/healthz"), Ok((200, _))))
    }

    /// Starts `portmon run` on `addr` with extra arguments, and waits until
    /// `ready` (a daemon on TLS answers only clients that speak it).
    pub fn start_when(addr: std::net::SocketAddr, extra: &[&str], mut ready: impl FnMut() -> bool) -> Self {
        let child = Command::new(portmon_bin())
            .args(["run", "--listen", &addr.to_string()])
            .args(extra)
            .env("PORTMON_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn portmon run");
        let mut daemon = Self {
            child,
            addr,
            home: Home::here(),
        };
        let up = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("portmon run exited early: {status}");
            }
            ready()
        });
        assert!(up, "portmon run on {addr} did not get ready");
        daemon
    }

    /// The daemon's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        self.memory().0
    }

    /// The daemon's resident memory in bytes, and what it is made of
    /// (`anon 30 MiB, file 25 MiB, shmem 0 MiB`: its heap, and its binary's
    /// pages with the mapped kernel maps), for the message of a failed bound.
    pub fn memory(&self) -> (u64, String) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("daemon status");
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        let parts = [("anon", "RssAnon:"), ("file", "RssFile:"), ("shmem", "RssShmem:")]
            .iter()
            .map(|(name, field)| format!("{name} {} MiB", kib(field).unwrap_or(0) >> 10))
            .collect::<Vec<_>>()
            .join(", ");
        (kib("VmRSS:").expect("VmRSS") * 1024, parts)
    }

    /// Whether the daemon still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A GET from the daemon's namespace, whichever one the caller is in.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        self.home.run(|| http_get(self.addr, path))
    }

    /// One scrape of `/metrics`, from the daemon's namespace.
    pub fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sends a signal and waits for the exit status.
    pub fn stop_with(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for portmon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
