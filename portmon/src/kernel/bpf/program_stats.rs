//! The kernel's own account of portmon's programs: how often each ran and
//! for how long (`bpf_prog_info.run_cnt`, `run_time_ns`), which the kernel
//! keeps only while `kernel.bpf_stats_enabled` is 1 (a sysctl, or a
//! `BPF_ENABLE_STATS` descriptor some tool holds open); and the runs it
//! skipped (`recursion_misses`, Linux 5.12), which it always counts: a
//! tracing program is not run on a CPU where another already runs, and
//! whatever that run would have counted is lost.

use std::{os::fd::RawFd, time::Duration};

use super::fdinfo;
use crate::kernel::procfs;

/// The kernel's ids of portmon's loaded programs, by name, with the
/// descriptor portmon holds each by.
#[derive(Debug, Clone, Default)]
pub struct ProgramIds(pub(super) Vec<(&'static str, u32, RawFd)>);

/// Runs of one program the kernel skipped since it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramMisses {
    pub program: &'static str,
    pub misses: u64,
}

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

/// What the kernel says of portmon's programs at one read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Each program's runs, or `None` while the kernel does not count them:
    /// figures frozen since statistics went off would read as an idle host.
    pub runs: Option<Vec<ProgramRuns>>,
    /// Each program's skipped runs; none on a kernel that does not count
    /// them.
    pub misses: Vec<ProgramMisses>,
}

impl ProgramIds {
    /// Each program's runs (while counted) and skipped runs, from one read
    /// of its `fdinfo`.
    pub fn read(&self) -> ProgramStats {
        let counting = stats_enabled();
        let mut stats = ProgramStats {
            runs: counting.then(Vec::new),
            misses: Vec::new(),
        };
        for (program, text) in self.fdinfo() {
            if let Some(misses) = fdinfo::field(&text, "recursion_misses:") {
                stats.misses.push(ProgramMisses { program, misses });
            }
            let run = || {
                Some(ProgramRuns {
                    program,
                    runs: fdinfo::field(&text, "run_cnt:")?,
                    run_time: Duration::from_nanos(fdinfo::field(&text, "run_time_ns:")?),
                })
            };
            if let (Some(runs), Some(run)) = (stats.runs.as_mut(), run()) {
                runs.push(run);
            }
        }
        if let Some(runs) = stats.runs.as_mut() {
            runs.sort_unstable_by_key(|r| r.program);
        }
        stats.misses.sort_unstable_by_key(|m| m.program);
        stats
    }

    /// The `fdinfo` of each program's descriptor, read from this process's
    /// own (which needs no capability; the `bpf(2)` walk of loaded
    /// programs needs CAP_SYS_ADMIN, given up after attaching): its
    /// descriptors only, as the daemon holds several per namespace.
    fn fdinfo(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.0.iter().filter_map(|&(program, id, fd)| {
            let text = fdinfo::read(u32::try_from(fd).ok()?)?;
            // The descriptor is still the program's.
            (fdinfo::field(&text, "prog_id:")? == u64::from(id)).then_some((program, text))
        })
    }
}
