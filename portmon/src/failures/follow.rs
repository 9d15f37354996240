//! Following the ring buffer: the daemon's reader task, a polling reader
//! for tests and tools, and the progress the watchdog checks.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use super::{FailureLog, Settler};
use crate::kernel::bpf::events::{AsyncFailureEvents, FailureEvents};

/// Reads the ring buffer and settles what it finds, in the calling thread:
/// for tests and tools that poll. The daemon [`follow`]s it instead.
#[derive(Debug)]
pub struct FailureReader {
    events: FailureEvents,
    settler: Settler,
}

impl FailureReader {
    pub fn new(events: FailureEvents) -> Self {
        Self {
            events,
            settler: Settler::default(),
        }
    }

    /// Takes every event waiting now into `log`; returns how many.
    pub fn drain_into(&mut self, log: &mut FailureLog) -> usize {
        let drained = self.events.drain();
        self.settler.settle_into(drained, log, &ReaderProgress::default())
    }
}

/// Waits on the ring buffer and files failures into `log` as they come,
/// until the task is dropped. Settling may enter a namespace or read
/// `/proc`, so it runs on the blocking pool, one batch at a time.
pub async fn follow(
    events: FailureEvents,
    log: Arc<Mutex<FailureLog>>,
    progress: Arc<ReaderProgress>,
) -> io::Result<()> {
    let mut ring = AsyncFailureEvents::new(events)?;
    let mut settler = Settler::default();
    loop {
        let interval = settler.log_interval();
        let Ok(drained) = tokio::time::timeout(interval, ring.next_batch()).await else {
            // A storm that stopped still gets its summary line.
            settler.end_log_interval();
            continue;
        };
        let drained = drained?;
        if drained.is_empty() {
            continue;
        }
        progress.beat();
        let (log, batch_progress) = (log.clone(), progress.clone());
        settler = tokio::task::spawn_blocking(move || {
            let mut batch = FailureLog::default();
            settler.settle_into(drained, &mut batch, &batch_progress);
            let mut shared = log.lock().unwrap_or_else(PoisonError::into_inner);
            // Counts of the whole batch: more failures than `recent` keeps
            // may come in one.
            shared.absorb(batch);
            settler
        })
        .await
        .map_err(io::Error::other)?;
        progress.idle();
    }
}

/// Whether the failure reader moves: when it last made progress on the
/// batch it is working on. A reader waiting for events is idle, not stuck.
#[derive(Debug)]
pub struct ReaderProgress {
    origin: Instant,
    /// Milliseconds since `origin` of the last progress, plus one; 0 when idle.
    busy_ms: AtomicU64,
}

impl Default for ReaderProgress {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            busy_ms: AtomicU64::new(0),
        }
    }
}

impl ReaderProgress {
    /// Records progress now.
    pub fn beat(&self) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        self.busy_ms.store(now, Ordering::Relaxed);
    }

    /// Records that the reader waits for events.
    pub fn idle(&self) {
        self.busy_ms.store(0, Ordering::Relaxed);
    }

    /// How long the reader has been busy without progress (zero when idle).
    pub fn stalled_for(&self) -> Duration {
        match self.busy_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            busy => {
                let now = self.origin.elapsed().as_millis() as u64 + 1;
                Duration::from_millis(now.saturating_sub(busy))
            }
        }
    }
}
