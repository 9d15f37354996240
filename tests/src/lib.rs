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
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use portmon::{
    failures::{Failure, FailureLog, FailureReader},
    kernel::{
        bpf::{
            connect_search::SearchTimes,
            counters::{Health, PortCount},
            socket_table::Followed,
            Kernel, KernelMaps, LoadOptions,
        },
        mounts::Mounts,
    },
};
use portmon_common::{Assignment, Family, PortStats, Proto, Role};

pub mod cgroup;
mod daemon;
pub mod podman;
mod prometheus;
pub mod supervised;

pub use daemon::{http_get, portmon_bin, portmon_ports, Daemon, BIN_VAR};
pub use prometheus::{metric_value, Prometheus, PROMETHEUS_PATIENCE};

/// Holds the lock that keeps tests from running at the same time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes closing `socket` send a reset: its port is free at once, with no
/// TIME_WAIT left for the tests after.
pub fn reset_on_close(socket: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open descriptor with a linger struct we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
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
                let cookie = enter_fresh_netns();
                work(&TestNetns { cookie })
            })
            .expect("spawn netns thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into a fresh network namespace with `lo` up
/// (its previous one goes when nothing else holds it); returns its cookie.
pub fn enter_fresh_netns() -> u64 {
    // SAFETY: unshare only changes this thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed (tests need root): {}",
        io::Error::last_os_error()
    );
    set_link_up("lo");
    portmon::kernel::netns::current_cookie().expect("netns cookie")
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

/// portmon's programs that attach on this kernel: every one but the
/// optional ones whose raw tracepoint it lacks (the kernel's BTF names each
/// raw tracepoint it has `btf_trace_NAME`).
pub fn attachable_programs() -> Vec<&'static str> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("the kernel's BTF");
    let has = |name: &str| {
        let wanted = format!("\0btf_trace_{name}\0").into_bytes();
        btf.windows(wanted.len()).any(|w| w == wanted.as_slice())
    };
    portmon::kernel::bpf::PROGRAMS
        .iter()
        .filter(|(name, _)| !portmon::kernel::bpf::programs::OPTIONAL.contains(name) || has(name))
        .map(|(name, _)| *name)
        .collect()
}

/// The programs a daemon attaches here without being asked for more: the
/// attachable ones but the opt-in ones (`connect-search`).
pub fn default_programs() -> Vec<&'static str> {
    attachable_programs()
        .into_iter()
        .filter(|name| !portmon::kernel::bpf::programs::OPT_IN.contains(name))
        .collect()
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

    /// Ports the kernel handed out `how` from one pool of one namespace.
    pub fn assigned(&self, netns: u64, proto: Proto, family: Family, how: Assignment) -> u64 {
        self.maps
            .assigned()
            .into_iter()
            .filter(|a| a.netns == netns && a.proto == proto && a.family == family && a.how == how)
            .map(|a| a.count)
            .sum()
    }

    /// How long TCP connects spent finding a port in one namespace.
    pub fn connect_search(&self, netns: u64) -> Option<SearchTimes> {
        self.maps.connect_search().into_iter().find(|t| t.netns == netns)
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

/// The binds `exposition` counts on `port` outside the host's namespace,
/// or `None` where no series names them.
pub fn binds_outside_host(exposition: &str, port: u16) -> Option<f64> {
    let label = format!("port=\"{port}\"");
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| l.starts_with("portmon_binds_total{") && l.contains(&label))
        .filter(|l| !l.contains("netns=\"host\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// `setpriv` set to run the command that follows as host user `uid` (its
/// group too, no others), with the system's `PATH`: the test's own may
/// lead through directories only root can read (a version manager's).
pub fn as_host_user(uid: u32) -> Command {
    let id = uid.to_string();
    let mut command = Command::new("setpriv");
    command
        .args([format!("--reuid={id}"), format!("--regid={id}")])
        .args(["--clear-groups", "--"])
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    command
}
