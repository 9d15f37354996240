//! The kernel's own account of portmon's programs: how often each ran and
//! for how long (`bpf_prog_info.run_cnt`, `run_time_ns`), which the kernel
//! keeps only while `kernel.bpf_stats_enabled` is 1 (a sysctl, or a
//! `BPF_ENABLE_STATS` descriptor some tool holds open).

use std::time::Duration;

use super::fdinfo;
use crate::kernel::procfs;

/// The kernel's ids of portmon's loaded programs, by name.
#[derive(Debug, Clone, Default)]
pub struct ProgramIds(pub(super) Vec<(&'static str, u32)>);

/// One program's runs and the time spent in them since it was loaded,
/// counted while statistics were on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramRuns {
    pub program: &'static str,
    pub runs: u64,
    pub run_time: Duration,
}

/// Whether the kernel counts runs and run time now.
pub fn stats_enabled() -> bool {
    procfs::sysctl_u32("kernel/bpf_stats_enabled").is_some_and(|on| on != 0)
}

impl ProgramIds {
    /// Each program's runs, or `None` while the kernel does not count them:
    /// figures frozen since statistics went off would read as an idle host.
    /// Read from the `fdinfo` of the daemon's own program descriptors,
    /// which needs no capability (the `bpf(2)` walk of loaded programs
    /// needs CAP_SYS_ADMIN, given up after attaching).
    pub fn read(&self) -> Option<Vec<ProgramRuns>> {
        if !stats_enabled() {
            return None;
        }
        let mut runs: Vec<ProgramRuns> = fdinfo::own_with("run_cnt:")
            .into_iter()
            .filter_map(|(_, text)| {
                let id = u32::try_from(fdinfo::field(&text, "prog_id:")?).ok()?;
                let &(program, _) = self.0.iter().find(|(_, known)| *known == id)?;
                Some(ProgramRuns {
                    program,
                    runs: fdinfo::field(&text, "run_cnt:")?,
                    run_time: Duration::from_nanos(fdinfo::field(&text, "run_time_ns:")?),
                })
            })
            .collect();
        runs.sort_unstable_by_key(|r| r.program);
        // A program aya holds more than one descriptor of counts once.
        runs.dedup_by_key(|r| r.program);
        Some(runs)
    }
}
