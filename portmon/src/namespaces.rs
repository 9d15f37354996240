//! The network namespaces of the host and the names people know them by:
//! the kernel programs name a namespace by cookie; people know it as
//! `host`, a name under `/run/netns`, the unit or container of a process
//! inside it, or its inode — and by the workload inside it (`workload`).

use std::{collections::HashMap, fs, io, os::unix::fs::MetadataExt, path::PathBuf};

use crate::{
    cgroups,
    kernel::netns::{cookie_of, inode_of, NetnsError, INIT_NET_COOKIE, INIT_NET_INODE},
    workload::{RuntimeState, Workload},
};

/// A scan of the namespaces the host cut short; the ones known before are
/// kept.
#[derive(Debug, thiserror::Error)]
#[error("the scan of network namespaces was cut short; the ones known before are kept")]
pub struct ScanIncomplete(#[source] pub io::Error);

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Cookie, as the kernel programs report it.
    pub cookie: u64,
    /// Inode of the namespace file (`ip netns identify`, `lsns`).
    pub inode: u64,
    /// A path that opens it (`/proc/PID/ns/net` or `/run/netns/NAME`).
    pub path: PathBuf,
    /// The name people know it by: `host`, the `/run/netns` name, the
    /// workload of a process inside, or `net:[INODE]`.
    pub name: String,
    /// What runs inside, from the first process found in it (by pid).
    pub workload: Workload,
}

/// Every network namespace the host has a process or a `/run/netns` name in.
#[derive(Debug, Default)]
pub struct Namespaces {
    by_cookie: HashMap<u64, Netns>,
    runtimes: RuntimeState,
}

impl Namespaces {
    /// Scans `/proc/*/ns/net` and `/run/netns`.
    pub fn scan() -> Self {
        Self::scan_with(RuntimeState::default())
    }

    /// Scans, naming pods from the runtimes' state in `runtimes`.
    pub fn scan_with(runtimes: RuntimeState) -> Self {
        let mut found = Self::unscanned(runtimes);
        if let Err(err) = found.rescan() {
            tracing::warn!("{}", crate::report::error_line(&err));
        }
        found
    }

    /// None yet; pods to be named from the runtimes' state in `runtimes`.
    pub fn unscanned(runtimes: RuntimeState) -> Self {
        Self {
            by_cookie: HashMap::new(),
            runtimes,
        }
    }

    /// Scans again, keeping what is still there. A scan the host cut short
    /// (out of file descriptors or memory: `/proc` unreadable, a namespace
    /// file that could not be opened) keeps every namespace known before as
    /// well, and says so: an empty or partial scan must not read as
    /// namespaces gone.
    pub fn rescan(&mut self) -> Result<(), ScanIncomplete> {
        let mut shortfall: Option<io::Error> = None;
        let mut short = |err: io::Error| {
            if !matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) {
                shortfall.get_or_insert(err);
            }
        };
        let host_inode = fs::metadata("/proc/1/ns/net").map(|m| m.ino()).ok();
        let mut by_inode: HashMap<u64, (PathBuf, String)> = HashMap::new();
        // A pod's namespace has a /run/netns name (`cni-…`, made by the CNI
        // plugin) and processes: the name comes first, the workload from
        // the first process.
        let mut workloads: HashMap<u64, Workload> = HashMap::new();
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(meta) = fs::metadata(&path) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    by_inode.entry(meta.ino()).or_insert((path, name));
                }
            }
        }
        match fs::read_dir("/proc") {
            Err(err) => short(err),
            Ok(entries) => {
                for entry in entries.flatten() {
                    if !entry
                        .file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                    {
                        continue;
                    }
                    let path = entry.path().join("ns/net");
                    // Another user's process: through the namespace helper.
                    let inode = match inode_of(&path) {
                        Ok(inode) => inode,
                        Err(err) => {
                            short(err);
                            continue;
                        }
                    };
                    if workloads.contains_key(&inode) {
                        continue;
                    }
                    let cgroup = cgroups::path_of(&entry.path());
                    let workload = cgroup
                        .as_deref()
                        .map(Workload::from_cgroup_path)
                        .unwrap_or_default();
                    workloads.insert(inode, workload);
                    by_inode.entry(inode).or_insert_with(|| {
                        let name = cgroup
                            .as_deref()
                            .and_then(cgroups::workload_name)
                            .unwrap_or_else(|| format!("net:[{inode}]"));
                        (path, name)
                    });
                }
            }
        }
        // Two namespaces may come from one unit; a name stays unique.
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut by_inode: Vec<(u64, (PathBuf, String))> = by_inode.into_iter().collect();
        by_inode.sort_unstable_by_key(|(inode, _)| *inode);
        for (inode, (_, name)) in &mut by_inode {
            if *seen.entry(name.clone()).or_insert(*inode) != *inode {
                *name = format!("{name}/net:[{inode}]");
            }
        }
        let known: HashMap<u64, u64> = self.by_cookie.values().map(|n| (n.inode, n.cookie)).collect();
        let mut by_cookie = HashMap::with_capacity(by_inode.len());
        for (inode, (path, name)) in by_inode {
            let cookie = match known.get(&inode) {
                Some(&cookie) => cookie,
                None => match cookie_of(&path) {
                    Ok(cookie) => cookie,
                    Err(err) => {
                        tracing::debug!(path = %path.display(), "skipping namespace: {err}");
                        if let NetnsError::Open { source, .. } = err {
                            short(source);
                        }
                        continue;
                    }
                },
            };
            // init_net is the first namespace the kernel makes, cookie 1
            // (net/core/net_namespace.c); /proc/1 may be out of reach.
            let name = if Some(inode) == host_inode || inode == INIT_NET_INODE || cookie == INIT_NET_COOKIE {
                "host".to_owned()
            } else {
                name
            };
            let mut workload = workloads.remove(&inode).unwrap_or_default();
            self.runtimes.complete(&mut workload);
            by_cookie.insert(
                cookie,
                Netns {
                    cookie,
                    inode,
                    path,
                    name,
                    workload,
                },
            );
        }
        if shortfall.is_some() {
            for (cookie, ns) in self.by_cookie.drain() {
                by_cookie.entry(cookie).or_insert(ns);
            }
        }
        let live: Vec<&str> = by_cookie
            .values()
            .filter_map(|n| n.workload.container_id.as_deref())
            .collect();
        self.runtimes.retain(&live);
        self.by_cookie = by_cookie;
        match shortfall {
            None => Ok(()),
            Some(cause) => Err(ScanIncomplete(cause)),
        }
    }

    /// Adds what the runtimes' state says about `workload`'s container.
    pub fn complete_workload(&mut self, workload: &mut Workload) {
        self.runtimes.complete(workload);
    }

    /// The namespace with this cookie, as last scanned.
    pub fn get(&self, cookie: u64) -> Option<&Netns> {
        self.by_cookie.get(&cookie)
    }

    /// All namespaces, as last scanned.
    pub fn iter(&self) -> impl Iterator<Item = &Netns> {
        self.by_cookie.values()
    }
}

/// The name of namespace `cookie` in `names`, or `cookie:N` for one portmon
/// has not named (gone, or out of reach).
pub fn display_name(names: &HashMap<u64, String>, cookie: u64) -> String {
    names
        .get(&cookie)
        .cloned()
        .unwrap_or_else(|| format!("cookie:{cookie}"))
}
