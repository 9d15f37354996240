//! Owners of the sockets the kernel programs did not see made (older than
//! portmon, or made while it was stopped): found by inode among every
//! process's descriptors (`kernel::socket_owners`), then named as the
//! kernel programs name theirs, by pid, command and cgroup.
//!
//! The walk of `/proc` is the cost, so a daemon keeps what it found while
//! the socket lives, walks at most once per [`WALK_EVERY`], asks about
//! listeners first, and asks about a socket no process was found holding
//! (a socket in flight between processes, or one only the kernel holds)
//! again only after [`MISS_RETRY`].

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use portmon_common::Owner;

use crate::{
    cgroups,
    kernel::{
        netns_opener, procfs,
        sock_diag::{is_listening, NsSocket},
        socket_owners::{self, Walk, INODES_MAX},
    },
};

/// The shortest time between two walks of `/proc`.
pub const WALK_EVERY: Duration = Duration::from_secs(1);
/// How long a socket no process was found holding is not asked about.
pub const MISS_RETRY: Duration = Duration::from_secs(30);

/// The owner of process `pid`, as the kernel programs record one: its
/// command, and its cgroup's id (the inode of its directory under
/// `cgroup_root`); `None` once the process is gone.
pub fn process_owner(pid: u32, netns: u64, cgroup_root: &Path) -> Option<Owner> {
    let comm = procfs::command_of(pid);
    if comm == [0; 16] {
        return None;
    }
    let relative = cgroups::path_of(Path::new(&format!("/proc/{pid}"))).unwrap_or_default();
    let relative = String::from_utf8_lossy(&relative).into_owned();
    let cgroup = std::fs::metadata(cgroup_root.join(relative.trim_start_matches('/'))).map_or(0, |m| m.ino());
    Some(Owner {
        netns,
        cgroup,
        comm,
        pid,
    })
}

/// What a daemon has found of owners, and what its walks cost.
#[derive(Debug, Default)]
pub struct FoundOwners {
    found: HashMap<u32, Owner>,
    missed: HashMap<u32, Instant>,
    last_walk: Option<Instant>,
    /// Walks of `/proc` since start.
    pub walks: u64,
    /// Of those, the ones a bound stopped (see `kernel::socket_owners`).
    pub walks_cut_short: u64,
}

impl FoundOwners {
    /// Owners by cookie of `sockets` (a whole snapshot) not in `known` (the
    /// kernel programs' owners): those found before, and those of the
    /// sockets `wanted` keeps that one walk finds now if the last is
    /// [`WALK_EVERY`] old.
    pub fn owners_of(
        &mut self,
        sockets: &[NsSocket],
        known: &HashMap<u64, Owner>,
        wanted: &dyn Fn(&NsSocket) -> bool,
        cgroup_root: &Path,
    ) -> HashMap<u64, Owner> {
        let unseen: Vec<&NsSocket> = sockets
            .iter()
            .filter(|s| s.socket.inode != 0 && !known.contains_key(&s.socket.cookie))
            .collect();
        let due = self.last_walk.is_none_or(|at| at.elapsed() >= WALK_EVERY);
        if due {
            // What was found for sockets since closed goes here, at most as
            // often as a walk: a set of every socket per call cost a scrape
            // of 100,000 sockets milliseconds.
            let present: std::collections::HashSet<u32> = unseen
                .iter()
                .map(|s| s.socket.inode)
                .filter(|inode| self.found.contains_key(inode) || self.missed.contains_key(inode))
                .collect();
            self.found.retain(|inode, _| present.contains(inode));
            self.missed
                .retain(|inode, at| present.contains(inode) && at.elapsed() < MISS_RETRY);
            let mut ask: Vec<&NsSocket> = unseen
                .iter()
                .copied()
                .filter(|s| {
                    wanted(s)
                        && !self.found.contains_key(&s.socket.inode)
                        && !self.missed.contains_key(&s.socket.inode)
                })
                .collect();
            if !ask.is_empty() {
                ask.sort_by_key(|s| !is_listening(s.socket.state, s.socket.proto));
                ask.truncate(INODES_MAX);
                self.last_walk = Some(Instant::now());
                let inodes: Vec<u32> = ask.iter().map(|s| s.socket.inode).collect();
                let walk = netns_opener::find_socket_owners(&inodes);
                self.take(&walk, &ask, cgroup_root);
            }
        }
        unseen
            .iter()
            .filter_map(|s| Some((s.socket.cookie, *self.found.get(&s.socket.inode)?)))
            .collect()
    }

    fn take(&mut self, walk: &Walk, asked: &[&NsSocket], cgroup_root: &Path) {
        self.walks += 1;
        if walk.cut_short {
            self.walks_cut_short += 1;
            tracing::debug!(
                processes = walk.processes,
                descriptors = walk.descriptors,
                "the walk for socket owners was cut short; the rest are looked for at the next"
            );
        }
        let now = Instant::now();
        for s in asked {
            let owner = walk
                .holders
                .get(&s.socket.inode)
                .and_then(|&pid| process_owner(pid, s.netns, cgroup_root));
            match owner {
                Some(owner) => {
                    self.found.insert(s.socket.inode, owner);
                }
                // A walk cut short may not have reached the holder: no miss.
                None if !walk.cut_short => {
                    self.missed.insert(s.socket.inode, now);
                }
                None => {}
            }
        }
    }
}

/// Owners by cookie of `sockets`, found in one walk here: for `portmon
/// ports` without a daemon, which sees the processes of its user (every
/// process as root).
pub fn owners_here(sockets: &[NsSocket], cgroup_root: &Path) -> HashMap<u64, Owner> {
    let inodes: Vec<u32> = sockets
        .iter()
        .map(|s| s.socket.inode)
        .filter(|&i| i != 0)
        .collect();
    let walk = socket_owners::walk(&inodes);
    let mut owners = HashMap::new();
    for s in sockets {
        if let Some(owner) = walk
            .holders
            .get(&s.socket.inode)
            .filter(|_| s.socket.inode != 0)
            .and_then(|&pid| process_owner(pid, s.netns, cgroup_root))
        {
            owners.insert(s.socket.cookie, owner);
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sock_diag::{Socket, SocketState};
    use portmon_common::{Family, Proto};
    use std::os::fd::AsRawFd as _;

    fn cgroup_root() -> std::path::PathBuf {
        crate::kernel::mounts::Mounts::read()
            .ok()
            .and_then(|m| m.cgroup2().map(|c| c.mount_point.clone()))
            .unwrap_or_else(|| "/sys/fs/cgroup".into())
    }

    /// A listener of this process, and the socket as a dump shows it.
    fn listener(cookie: u64) -> (std::net::TcpListener, NsSocket) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("the socket's inode")
            .ino() as u32;
        let socket = NsSocket {
            netns: 1,
            socket: Socket {
                proto: Proto::Tcp,
                family: Family::Inet,
                state: SocketState::Listen,
                local: listener.local_addr().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                cookie,
                uid: 0,
                inode,
            },
        };
        (listener, socket)
    }

    #[test]
    fn one_walk_a_second_finds_owners_and_keeps_them_while_the_socket_lives() {
        let root = cgroup_root();
        let all = |_: &NsSocket| true;
        let mut found = FoundOwners::default();
        let (_a, a) = listener(10);
        let owners = found.owners_of(&[a], &HashMap::new(), &all, &root);
        assert_eq!(
            owners.get(&10).map(|o| o.pid),
            Some(std::process::id()),
            "{owners:?}"
        );
        assert_eq!(found.walks, 1);

        // A socket new since: not walked for before WALK_EVERY is over, while
        // the one found stays known without a walk.
        let (_b, b) = listener(11);
        let owners = found.owners_of(&[a, b], &HashMap::new(), &all, &root);
        assert_eq!(found.walks, 1, "no second walk within {WALK_EVERY:?}");
        assert!(
            owners.contains_key(&10) && !owners.contains_key(&11),
            "{owners:?}"
        );

        // The kernel programs' owner wins; a socket nobody wants asked about
        // is not walked for.
        let kernel = Owner {
            netns: 1,
            cgroup: 1,
            comm: [0; 16],
            pid: 1,
        };
        let known = HashMap::from([(10, kernel)]);
        std::thread::sleep(WALK_EVERY);
        let owners = found.owners_of(&[a, b], &known, &|s: &NsSocket| s.socket.cookie != 11, &root);
        assert!(owners.is_empty(), "{owners:?}");
        assert_eq!(found.walks, 1, "nothing left to ask about");
        let owners = found.owners_of(&[a, b], &known, &all, &root);
        assert_eq!(
            owners.get(&11).map(|o| o.pid),
            Some(std::process::id()),
            "{owners:?}"
        );
        assert_eq!((found.walks, found.walks_cut_short), (2, 0));
    }

    #[test]
    fn this_process_is_named_as_the_kernel_programs_name_it() {
        let root = crate::kernel::mounts::Mounts::read()
            .ok()
            .and_then(|m| m.cgroup2().map(|c| c.mount_point.clone()))
            .unwrap_or_else(|| "/sys/fs/cgroup".into());
        let owner = process_owner(std::process::id(), 7, &root).expect("this process");
        assert_eq!(owner.pid, std::process::id());
        assert_eq!(owner.netns, 7);
        assert_eq!(
            procfs::comm_text(&owner.comm),
            procfs::comm_text(&procfs::command_of(std::process::id()))
        );
        assert_eq!(process_owner(u32::MAX, 7, &root), None, "no such process");
    }
}
