//! Which of portmon's programs the kernel runs now, asked of the kernel at
//! each scrape: a cgroup link can be detached from outside the daemon
//! (`bpftool link detach`, `BPF_LINK_DETACH`), which leaves the daemon's
//! link open and the program gone from the cgroup.

use std::{collections::HashMap, sync::OnceLock};

use portmon_common::program;

use super::{
    fdinfo,
    programs::{Hook, PROGRAMS},
};

/// Asks the kernel which programs run at portmon's cgroup, through the
/// `fdinfo` of the daemon's own cgroup links: a link detached from outside
/// shows `cgroup_id: 0` there. `BPF_PROG_QUERY` would need CAP_NET_ADMIN
/// (Linux 6.1; CAP_SYS_ADMIN will do later), which the daemon gives up
/// after attaching; `/proc/self/fdinfo` needs none.
#[derive(Debug)]
pub struct AttachedCheck {
    /// (name, program id) of every program loaded.
    ids: Vec<(&'static str, u32)>,
    /// Program id → the descriptor of its cgroup link, found at first use
    /// (the links exist by then and stay open for the daemon's life).
    links: OnceLock<HashMap<u32, u32>>,
}

impl AttachedCheck {
    pub(super) fn new(ids: Vec<(&'static str, u32)>) -> Self {
        Self {
            ids,
            links: OnceLock::new(),
        }
    }

    /// Of `linked` (the programs the daemon holds a link for), those the
    /// kernel runs: a cgroup program's link must still have its cgroup; a
    /// raw tracepoint link cannot be detached but by closing it. A link
    /// that cannot be read leaves the program counted as linked.
    pub fn attached(&self, linked: &[&'static str]) -> Vec<&'static str> {
        let links = self.links.get_or_init(cgroup_links);
        PROGRAMS
            .iter()
            .filter(|(name, _)| linked.contains(name))
            .filter(|&&(name, hook)| match hook {
                Hook::CgroupRoot if is_cgroup_program(name) => {
                    let Some(&(_, id)) = self.ids.iter().find(|(n, _)| *n == name) else {
                        return true;
                    };
                    links
                        .get(&id)
                        .and_then(|&fd| link_field(fd, "cgroup_id:"))
                        .is_none_or(|cgroup| cgroup != 0)
                }
                _ => true,
            })
            .map(|(name, _)| *name)
            .collect()
    }
}

fn is_cgroup_program(name: &str) -> bool {
    matches!(
        name,
        program::BIND4
            | program::BIND6
            | program::CONNECT4
            | program::CONNECT6
            | program::POST_BIND4
            | program::POST_BIND6
            | program::SOCK_RELEASE
            | program::SOCK_OPS
    )
}

/// Every cgroup link this process holds, by the id of its program.
fn cgroup_links() -> HashMap<u32, u32> {
    // Only cgroup links show a cgroup_id.
    fdinfo::own_with("cgroup_id:")
        .into_iter()
        .filter_map(|(fd, text)| Some((u32::try_from(fdinfo::field(&text, "prog_id:")?).ok()?, fd)))
        .collect()
}

/// A number of the `fdinfo` of descriptor `fd`.
fn link_field(fd: u32, name: &str) -> Option<u64> {
    fdinfo::field(&fdinfo::read(fd)?, name)
}
