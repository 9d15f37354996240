//! An honest watchdog: the ping goes out only while the parts that can
//! wedge still move — the async runtime (the ping runs on it), the thread
//! that drains failures from the ring buffer (its heartbeat), and the kernel
//! maps (a read must finish, so no scrape holds their lock forever).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::notify::Notifier;

/// When a thread last showed it runs, in milliseconds since it was made.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// Records that the thread is alive now.
    pub fn beat(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the last beat was.
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Pings the service manager every half `interval` while `reader` beats
/// within `interval / 2` and `probe` (a kernel map read) returns in time.
pub fn spawn(
    notifier: Arc<Notifier>,
    interval: Duration,
    reader: Arc<Heartbeat>,
    probe: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let period = interval / 2;
    let probe = Arc::new(probe);
    tracing::info!(interval = ?interval, "watchdog on");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            let probe = probe.clone();
            let maps = tokio::time::timeout(period, tokio::task::spawn_blocking(move || probe())).await;
            let reader_age = reader.age();
            match maps {
                Ok(Ok(())) if reader_age < period => notifier.watchdog(),
                Ok(Ok(())) => {
                    tracing::warn!(age = ?reader_age, "failure reader is stuck: no watchdog ping");
                }
                _ => tracing::warn!("kernel maps did not answer in {period:?}: no watchdog ping"),
            }
        }
    })
}
