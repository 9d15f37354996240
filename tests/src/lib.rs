//! Support for portmon's integration tests: fresh network namespaces, the
//! kernel programs loaded in-process, and the daemon binary.
//!
//! Tests need root (they load BPF programs and create namespaces) and run
//! one at a time: they count the programs attached to the cgroup root, which
//! other tests' programs would disturb. `serial()` enforces that even when
//! the harness runs threads.

use std::{
    ffi::CString,
    io,
    path::PathBuf,
    process::Command,
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use portmon::{
    failures::{Failure, FailureLog, FailureReader},
    kernel::{
        bpf::{
            counters::{Health, PortCount},
            socket_table::Followed,
            Kernel, KernelMaps, LoadOptions,
        },
        mounts::Mounts,
    },
};
use portmon_common::{Family, PortStats, Proto, Role};

pub mod supervised;

/// Holds the lock that keeps tests from running at the same time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Name given to the threads tests make sockets on; the kernel reports it as `comm`.
pub const TEST_COMM: &str = "pm-test-ns";

/// A network namespace made for one test, with `lo` up, and a thread in it.
#[derive(Debug)]
pub struct TestNetns {
    /// Its cookie, as the kernel programs report it.
    pub cookie: u64,
}

/// Runs `work` on a thread in a fresh network namespace.
pub fn in_fresh_netns<T: Send>(work: impl FnOnce(&TestNetns) -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(TEST_COMM.into())
            .spawn_scoped(scope, || {
                // SAFETY: unshare only changes this thread's namespace.
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "unshare(CLONE_NEWNET) failed (tests need root): {}",
                    io::Error::last_os_error()
                );
                set_link_up("lo");
                let cookie = portmon::kernel::netns::current_cookie().expect("netns cookie");
                work(&TestNetns { cookie })
            })
            .expect("spawn netns thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn set_link_up(name: &str) {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req
            .ifr_name
            .iter_mut()
            .zip(CString::new(name).unwrap().as_bytes_with_nul())
        {
            *dst = *src as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req),
            0,
            "SIOCGIFFLAGS {name}"
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req),
            0,
            "SIOCSIFFLAGS {name}"
        );
        libc::close(fd);
    }
}

/// Says, in the test's output, which part of a test did not run and why:
/// `cargo xtask vm-test` shows the harness's output of passing tests and
/// lists these lines per kernel.
pub fn skipped(why: &str) {
    println!("portmon-tests: skipped: {why}");
}

/// Whether sock_diag dumps sockets that are bound and neither listening
/// nor connected (Linux 6.7), tried in a fresh namespace.
pub fn dumps_bound_inactive() -> bool {
    in_fresh_netns(|_| portmon::kernel::features::dumps_bound_inactive())
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn write_sysctl(name: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{name}"), value)
        .unwrap_or_else(|e| panic!("writing {name}={value}: {e}"));
}

/// The cgroup v2 root, from mountinfo.
pub fn cgroup_root() -> PathBuf {
    Mounts::read()
        .expect("mountinfo")
        .cgroup2()
        .expect("a cgroup v2 mount")
        .mount_point
        .clone()
}

/// portmon's kernel programs, loaded and attached in this process.
pub struct Monitor {
    kernel: Option<Kernel>,
    /// The same bundle the daemon's state reads.
    maps: KernelMaps,
    reader: FailureReader,
    pub failures: FailureLog,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("attached", &self.kernel.is_some())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Loads and attaches every program to the cgroup v2 root.
    pub fn attach() -> Self {
        Self::attach_with(LoadOptions::default())
    }

    /// Loads and attaches every program, with options.
    pub fn attach_with(options: LoadOptions) -> Self {
        portmon::kernel::preflight::check().expect("preflight (tests need root)");
        let (kernel, maps, events) = Kernel::load(&cgroup_root(), options).expect("load kernel programs");
        Self {
            kernel: Some(kernel),
            maps,
            reader: FailureReader::new(events),
            failures: FailureLog::default(),
        }
    }

    /// The counters of one port in one namespace.
    pub fn stats(&self, netns: u64, proto: Proto, family: Family, role: Role, port: u16) -> PortStats {
        self.ports()
            .into_iter()
            .find(|c| {
                c.netns == netns && c.proto == proto && c.family == family && c.role == role && c.port == port
            })
            .map(|c| c.stats)
            .unwrap_or_default()
    }

    /// Every port with counters in one namespace.
    pub fn ports_in(&self, netns: u64) -> Vec<PortCount> {
        self.ports().into_iter().filter(|c| c.netns == netns).collect()
    }

    fn ports(&self) -> Vec<PortCount> {
        self.maps.ports()
    }

    pub fn health(&self) -> Health {
        self.maps.health()
    }

    /// The owners the kernel programs recorded, by socket cookie.
    pub fn owners(&self) -> std::collections::HashMap<u64, portmon_common::Owner> {
        self.maps.owners()
    }

    /// The sockets the kernel programs follow now.
    pub fn followed(&self) -> Vec<Followed> {
        self.maps.followed()
    }

    /// Failures in one namespace, waiting up to a second for `want` of them.
    pub fn failures_in(&mut self, netns: u64, want: usize) -> Vec<Failure> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.reader.drain_into(&mut self.failures);
            let found: Vec<Failure> = self
                .failures
                .recent()
                .filter(|f| f.netns == netns)
                .cloned()
                .collect();
            if found.len() >= want || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Detaches every program, keeping them loaded and their counts, until
    /// `resume`.
    pub fn suspend(&mut self) {
        if let Some(kernel) = &mut self.kernel {
            kernel.suspend();
        }
    }

    /// Attaches again what `suspend` detached.
    pub fn resume(&mut self) {
        if let Some(kernel) = &mut self.kernel {
            kernel.resume().expect("attach kernel programs again");
        }
    }

    /// Detaches everything now.
    pub fn detach(&mut self) {
        if let Some(kernel) = self.kernel.take() {
            kernel.detach();
        }
    }
}

/// How many of portmon's programs the kernel has loaded right now.
pub fn loaded_portmon_programs() -> usize {
    let names: Vec<&str> = portmon::kernel::bpf::PROGRAMS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| names.iter().any(|want| want.starts_with(n) && !n.is_empty()))
        })
        .count()
}

/// The number of portmon's programs once it stops changing: programs of a
/// detached instance are freed after an RCU grace period, not at once.
pub fn settled_portmon_programs() -> usize {
    let mut last = loaded_portmon_programs();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = loaded_portmon_programs();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

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

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A GET over real HTTP: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> io::Result<(u16, String)> {
    portmon::http::get(addr, path, Duration::from_secs(10))
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
struct Home(std::fs::File);

impl Home {
    fn here() -> Self {
        Self(std::fs::File::open("/proc/thread-self/ns/net").expect("own netns"))
    }

    fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd as _;
        let path = PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()));
        portmon::kernel::netns::run_in(&path, work).expect("enter the test's own netns")
    }
}

impl Daemon {
    /// Starts `portmon run` on `addr` with extra arguments, and waits for
    /// `/healthz` to answer.
    pub fn start(addr: std::net::SocketAddr, extra: &[&str]) -> Self {
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
            matches!(http_get(addr, "/healthz"), Ok((200, _)))
        });
        assert!(up, "portmon run did not answer /healthz on {addr}");
        daemon
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

/// A named network namespace (`ip netns add`), so the daemon finds it under
/// `/run/netns` as any operator's would be; deleted on drop.
#[derive(Debug)]
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn create(tag: &str) -> Self {
        let name = format!("portmon-test-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed (tests need root and iproute2)");
        let up = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status();
        assert!(
            up.is_ok_and(|s| s.success()),
            "ip -n {name} link set lo up failed"
        );
        Self { name }
    }

    /// Runs `work` on a thread inside the namespace.
    pub fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from(format!("/run/netns/{}", self.name));
        portmon::kernel::netns::run_in(&path, work).expect("enter named netns")
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Socket counts by (proto, local port, state) as `ss -tuanH` shows them,
/// with `ss`'s state names turned into portmon's.
pub fn ss_counts(ss_output: &str) -> std::collections::BTreeMap<(String, u16, String), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for line in ss_output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [netid, state, _, _, local, ..] = fields.as_slice() else {
            continue;
        };
        let Some(port) = local.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let state = match *state {
            "ESTAB" => "established".to_owned(),
            "UNCONN" => "unconn".to_owned(),
            other => other.to_lowercase().replace("-wait-", "_wait").replace('-', "_"),
        };
        *counts.entry(((*netid).to_owned(), port, state)).or_default() += 1;
    }
    counts
}

/// Percent-encodes a query parameter value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server (the Debian package) scraping `target` every
/// second, with its data in a temporary directory; stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    dir: PathBuf,
    home: Home,
}

impl Prometheus {
    pub fn start(addr: std::net::SocketAddr, target: std::net::SocketAddr, rule_files: &[PathBuf]) -> Self {
        Self::start_scraping(addr, &[target], rule_files)
    }

    /// Like `start`, with every target in the one `portmon` job.
    pub fn start_scraping(
        addr: std::net::SocketAddr,
        targets: &[std::net::SocketAddr],
        rule_files: &[PathBuf],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portmon-prometheus-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n  - job_name: portmon\n    static_configs:\n      - targets: [{}]\n",
            if rules.is_empty() { "  []\n".to_owned() } else { rules.concat() },
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("start prometheus (apt-get install prometheus; cargo xtask test installs it)");
        let prometheus = Self {
            child,
            addr,
            dir,
            home: Home::here(),
        };
        let ready = wait_until(Duration::from_secs(60), || {
            matches!(http_get(addr, "/-/ready"), Ok((200, _)))
        });
        assert!(ready, "prometheus not ready; log in {}", prometheus.dir.display());
        prometheus
    }

    /// The value of an instant query's first result, if any.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = self.home.run(|| http_get(self.addr, &path)).ok()?;
        assert_eq!(status, 200, "query {promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"].get(0)?["value"][1].as_str()?.parse().ok()
    }

    /// The JSON answer of a GET on Prometheus' HTTP API (`/api/v1/...`).
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        let (status, body) = self
            .home
            .run(|| http_get(self.addr, path_and_query))
            .unwrap_or_else(|e| panic!("GET {path_and_query} from prometheus: {e}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: status {status}, not JSON ({e}): {body}"))
    }

    /// Waits until `promql` returns `want`; returns the last value seen.
    pub fn wait_for(&self, promql: &str, want: f64, timeout: Duration) -> Option<f64> {
        let mut last = None;
        wait_until(timeout, || {
            last = self.query(promql);
            last == Some(want)
        });
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the series `name` whose labels include all of `labels`, in
/// Prometheus text exposition; `None` if there is none.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        all.then(|| value.trim().parse().ok()).flatten()
    })
}
