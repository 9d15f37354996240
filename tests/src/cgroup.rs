//! Processes in cgroups of a test's choosing, each in a network namespace
//! of its own: the shape of a container (a pod's sandbox, a unit), made
//! without a runtime.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use crate::{cgroup_root, wait_until};

/// A process that entered a fresh network namespace (with `lo` up) in the
/// cgroup at `path` below a directory of the test's own under the cgroup v2
/// mount; killed, and its cgroups removed, on drop.
#[derive(Debug)]
pub struct CgroupProcess {
    child: Child,
    /// The test's own directory under the mount, removed with everything below.
    top: PathBuf,
    /// The cgroup the process is in.
    pub cgroup: PathBuf,
}

impl CgroupProcess {
    /// Starts one in `<mount>/portmon-test-<tag>-<pid>/<path>`; `path` may hold
    /// any bytes but `/` in its components.
    pub fn start(tag: &str, path: &[u8]) -> Self {
        let top = cgroup_root().join(format!("portmon-test-{tag}-{}", std::process::id()));
        let cgroup = top.join(OsStr::from_bytes(path));
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("mkdir {} (tests need root): {e}", cgroup.display()));
        // The shell moves itself in first, so that everything after it,
        // the namespace's only process included, is in the cgroup.
        let child = Command::new("sh")
            .args([
                "-c",
                r#"echo $$ > "$1" && exec unshare --net sh -c 'ip link set lo up && exec sleep 600'"#,
                "sh",
            ])
            .arg(cgroup.join("cgroup.procs"))
            .spawn()
            .expect("spawn sh");
        let process = Self { child, top, cgroup };
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let entered = wait_until(Duration::from_secs(10), || {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", process.pid())).unwrap_or_default();
            let ns = std::fs::metadata(process.netns()).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            comm.trim() == "sleep" && ns.is_ok() && ns.ok() != own.as_ref().ok().copied()
        });
        assert!(
            entered,
            "the process in {} did not enter its namespace",
            process.cgroup.display()
        );
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its network namespace, to enter with `portmon::kernel::netns::run_in`.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Runs `work` on a thread inside its network namespace.
    pub fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        portmon::kernel::netns::run_in(&self.netns(), work).expect("enter the process's namespace")
    }
}

impl Drop for CgroupProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Innermost first: a cgroup goes only once it has no children.
        let mut dirs: Vec<PathBuf> = self
            .cgroup
            .ancestors()
            .take_while(|d| d.starts_with(&self.top))
            .map(PathBuf::from)
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = wait_until(Duration::from_secs(2), || {
                std::fs::remove_dir(&dir).is_ok() || !dir.exists()
            });
        }
    }
}
