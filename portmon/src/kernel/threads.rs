//! Threads portmon starts for a piece of work (entering a namespace,
//! dumping sockets in parallel): the OS may refuse one (`RLIMIT_NPROC`, a
//! cgroup's `pids.max`, memory). A refusal is counted and the caller does
//! the work another way; it is never a panic.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    thread::{Builder, Scope, ScopedJoinHandle},
};

static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Starts `work` on a thread of `scope`; `None` (counted) if the OS
/// refuses the thread.
pub fn spawn_scoped<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    name: &str,
    work: impl FnOnce() -> T + Send + 'scope,
) -> Option<ScopedJoinHandle<'scope, T>> {
    match Builder::new().name(name.to_owned()).spawn_scoped(scope, work) {
        Ok(handle) => Some(handle),
        Err(err) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(thread = name, "the OS refused a thread: {err}");
            None
        }
    }
}

/// Threads refused since start.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}
