//! Which of portmon's programs the kernel runs now, asked of the kernel at
//! each scrape: a cgroup link can be detached from outside the daemon
//! (`bpftool link detach`, `BPF_LINK_DETACH`), which leaves the daemon's
//! link open and the program gone from the cgroup.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use portmon_common::program;

use super::loader::{Hook, PROGRAMS};

/// `bpf(2)` command `BPF_PROG_QUERY` (include/uapi/linux/bpf.h).
const BPF_PROG_QUERY: libc::c_long = 16;

/// The cgroup attach type of each cgroup program (`enum bpf_attach_type`,
/// include/uapi/linux/bpf.h: numbers of the stable ABI).
fn attach_type(name: &str) -> Option<u32> {
    Some(match name {
        program::BIND4 => 8,
        program::BIND6 => 9,
        program::CONNECT4 => 10,
        program::CONNECT6 => 11,
        program::POST_BIND4 => 12,
        program::POST_BIND6 => 13,
        program::SOCK_RELEASE => 34,
        _ => return None,
    })
}

/// The first fields of `union bpf_attr` for `BPF_PROG_QUERY`; the kernel
/// reads the fields a caller passes and takes the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Asks the kernel which programs run at portmon's cgroup.
#[derive(Debug)]
pub struct AttachedCheck {
    cgroup: OwnedFd,
    /// (name, program id) of every program loaded.
    ids: Vec<(&'static str, u32)>,
}

impl AttachedCheck {
    pub(super) fn new(cgroup: &File, ids: Vec<(&'static str, u32)>) -> io::Result<Self> {
        Ok(Self {
            cgroup: cgroup.try_clone()?.into(),
            ids,
        })
    }

    /// Of `linked` (the programs the daemon holds a link for), those the
    /// kernel runs: a cgroup program must be in its cgroup's list; a raw
    /// tracepoint link cannot be detached but by closing it. A query that
    /// fails leaves the program counted as linked.
    pub fn attached(&self, linked: &[&'static str]) -> Vec<&'static str> {
        PROGRAMS
            .iter()
            .filter(|(name, _)| linked.contains(name))
            .filter(|&&(name, hook)| match (hook, attach_type(name)) {
                (Hook::CgroupRoot, Some(kind)) => {
                    let Some(&(_, id)) = self.ids.iter().find(|(n, _)| *n == name) else {
                        return true;
                    };
                    self.query(kind).is_none_or(|ids| ids.contains(&id))
                }
                _ => true,
            })
            .map(|(name, _)| *name)
            .collect()
    }

    /// The ids of the programs attached at the cgroup for `kind`.
    fn query(&self, kind: u32) -> Option<Vec<u32>> {
        // Room for every program a cgroup holds per type (BPF_CGROUP_MAX_PROGS, 64).
        let mut ids = [0u32; 64];
        let mut attr = ProgQuery {
            target_fd: u32::try_from(self.cgroup.as_raw_fd()).ok()?,
            attach_type: kind,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..ProgQuery::default()
        };
        // SAFETY: a valid attr of the size passed, whose prog_ids points to
        // prog_cnt writable u32s that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &raw mut attr,
                size_of::<ProgQuery>(),
            )
        };
        if rc != 0 {
            tracing::debug!("BPF_PROG_QUERY: {}", io::Error::last_os_error());
            return None;
        }
        let n = (attr.prog_cnt as usize).min(ids.len());
        Some(ids[..n].to_vec())
    }
}
