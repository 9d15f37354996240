//! cgroups to the names people know: a cgroup v2 id, as the kernel
//! programs record an owner's (`bpf_get_current_cgroup_id`), to its path
//! and the systemd unit that path names; a process to the workload
//! (container or unit) that names its network namespace.
//!
//! A cgroup's id is its directory's inode number in the cgroup v2 mount
//! (kernfs uses the node id as inode number on 64-bit hosts, `kernfs_ino`
//! in fs/kernfs/kernfs-internal.h), so one walk of the hierarchy maps
//! every live cgroup.

use crate::kernel::procfs;
use std::{
    collections::HashMap,
    os::unix::fs::DirEntryExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How old the map may be before an unknown id makes portmon walk the
/// hierarchy again: owners in cgroups gone since would otherwise make
/// every lookup a walk.
const RESCAN: Duration = Duration::from_secs(2);

/// Paths of the cgroups under one cgroup v2 mount, by id.
#[derive(Debug)]
pub struct CgroupPaths {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    scanned: Option<Instant>,
}

impl CgroupPaths {
    /// Paths under the cgroup v2 mount at `root`; nothing is read yet.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            scanned: None,
        }
    }

    /// The cgroup v2 mount.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of cgroup `id` below the mount (`/system.slice/nginx.service`),
    /// walking the hierarchy again when it is unknown and the last walk is old.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        let stale = self.scanned.is_none_or(|at| at.elapsed() > RESCAN);
        if !self.by_id.contains_key(&id) && stale {
            self.scan();
        }
        self.by_id.get(&id).map(String::as_str)
    }

    /// The systemd unit cgroup `id` belongs to, if its path names one.
    pub fn unit(&mut self, id: u64) -> Option<String> {
        self.path(id).and_then(systemd_unit).map(str::to_owned)
    }

    fn scan(&mut self) {
        self.by_id.clear();
        if let Ok(meta) = std::fs::metadata(&self.root) {
            use std::os::unix::fs::MetadataExt as _;
            self.by_id.insert(meta.ino(), "/".to_owned());
        }
        let mut pending = vec![(self.root.clone(), String::new())];
        while let Some((dir, path)) = pending.pop() {
            // A cgroup removed during the walk is simply not there.
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // d_type and d_ino come with the directory listing: no stat per cgroup.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = format!("{path}/{}", entry.file_name().to_string_lossy());
                self.by_id.insert(entry.ino(), child.clone());
                pending.push((entry.path(), child));
            }
        }
        self.scanned = Some(Instant::now());
    }
}

/// Unit types whose processes live in a cgroup of their own name
/// (slices only group other units).
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// The innermost systemd unit a cgroup path names:
/// `/system.slice/nginx.service` → `nginx.service`, also from a cgroup a
/// service made below its own (`/system.slice/nginx.service/worker`).
pub fn systemd_unit(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|c| UNIT_SUFFIXES.iter().any(|s| c.len() > s.len() && c.ends_with(s)))
}

/// The cgroup path of a process, as bytes (a cgroup name may be any):
/// its cgroup v2 path (`/system.slice/docker-<id>.scope`), or systemd's v1
/// hierarchy's on hybrid hosts; `None` in the root cgroup.
pub fn path_of(proc_pid: &Path) -> Option<Vec<u8>> {
    let text = procfs::read_bytes(proc_pid.join("cgroup")).ok()?;
    let v1_path = |hierarchy: &[u8]| {
        text.split(|&b| b == b'\n')
            .find_map(|line| {
                let (_, rest) = split_once(line, b':')?;
                let (name, path) = split_once(rest, b':')?;
                (name == hierarchy).then_some(path)
            })
            .filter(|path| *path != b"/")
    };
    // Line `0::PATH` is cgroup v2's, `N:name=systemd:PATH` systemd's v1.
    let v2 = text
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"0::"))
        .filter(|path| *path != b"/");
    v2.or_else(|| v1_path(b"name=systemd")).map(<[u8]>::to_vec)
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// The workload (container or systemd unit) a cgroup path names, as the
/// name of a network namespace: its last component, with a container id
/// shortened to the 12 characters `docker ps` shows
/// (`/system.slice/docker-<id>.scope` → `docker-<id12>`). Invalid UTF-8
/// becomes U+FFFD.
pub fn workload_name(cgroup_path: &[u8]) -> Option<String> {
    let last = cgroup_path.rsplit(|&b| b == b'/').find(|c| !c.is_empty())?;
    let hex_run = |from: usize| last[from..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let id_start =
        (0..last.len()).find(|&i| (i == 0 || !last[i - 1].is_ascii_hexdigit()) && hex_run(i) >= 64);
    let shown = match id_start {
        Some(start) => &last[..start + 12],
        None => last,
    };
    Some(String::from_utf8_lossy(shown).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload_name(path: &str) -> Option<String> {
        super::workload_name(path.as_bytes())
    }

    #[test]
    fn workloads_are_named_as_people_know_them() {
        let id = "3f2a1b".repeat(10) + "abcd";
        assert_eq!(
            workload_name(&format!("/system.slice/docker-{id}.scope")).as_deref(),
            Some("docker-3f2a1b3f2a1b")
        );
        assert_eq!(
            workload_name(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            ))
            .as_deref(),
            Some("cri-containerd-3f2a1b3f2a1b")
        );
        assert_eq!(workload_name(&format!("/{id}")).as_deref(), Some("3f2a1b3f2a1b"));
        assert_eq!(
            workload_name("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(workload_name("/"), None);
    }

    #[test]
    fn names_with_any_utf8_do_not_panic() {
        assert_eq!(workload_name("/tést-ünit-é").as_deref(), Some("tést-ünit-é"));
        let id = "ab".repeat(32);
        assert_eq!(
            workload_name(&format!("/é{id}ü")).as_deref(),
            Some(&*format!("é{}", &id[..12]))
        );
        assert_eq!(
            super::workload_name(b"/bad-\xff\xc3.scope").as_deref(),
            Some("bad-\u{fffd}\u{fffd}.scope")
        );
    }

    #[test]
    fn paths_come_from_v2_else_systemds_v1_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], Option<&[u8]>); 5] = [
            (b"0::/system.slice/a.service\n", Some(b"/system.slice/a.service")),
            (b"0::/\n", None),
            (
                b"12:pids:/x\n1:name=systemd:/system.slice/b.service\n0::/\n",
                Some(b"/system.slice/b.service"),
            ),
            (b"0::/t\xe9st-\xff\n", Some(b"/t\xe9st-\xff")),
            (b"garbage", None),
        ];
        for (text, want) in cases {
            std::fs::write(dir.path().join("cgroup"), text).unwrap();
            assert_eq!(
                path_of(dir.path()).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn units_come_from_the_innermost_unit_in_the_path() {
        let cases = [
            ("/system.slice/nginx.service", Some("nginx.service")),
            ("/system.slice/nginx.service/worker", Some("nginx.service")),
            ("/system.slice/docker-3f2a.scope", Some("docker-3f2a.scope")),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
                Some("foo.service"),
            ),
            (
                "/user.slice/user-1000.slice/session-4.scope",
                Some("session-4.scope"),
            ),
            ("/system.slice", None),
            ("/docker/3f2a1b", None),
            ("/", None),
            ("/.service", None),
        ];
        for (path, unit) in cases {
            assert_eq!(systemd_unit(path), unit, "{path}");
        }
    }

    #[test]
    fn ids_are_the_directories_inodes() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("system.slice/nginx.service")).unwrap();
        std::fs::write(root.path().join("system.slice/cgroup.procs"), "").unwrap();
        let ino = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().ino();
        let mut paths = CgroupPaths::new(root.path().to_owned());
        assert_eq!(paths.path(ino("")), Some("/"));
        assert_eq!(paths.path(ino("system.slice")), Some("/system.slice"));
        let nginx = ino("system.slice/nginx.service");
        assert_eq!(paths.unit(nginx).as_deref(), Some("nginx.service"));
        assert_eq!(
            paths.path(ino("system.slice/cgroup.procs")),
            None,
            "files are no cgroups"
        );
    }
}
