//! An honest watchdog: the ping goes out only while the parts that can
//! wedge still move — the async runtime (the ping runs on it), the task
//! that settles failures from the ring buffer (its progress), and the kernel
//! maps (a read must finish, so no scrape holds their lock forever).

use std::{sync::Arc, time::Duration};

use super::notify::Notifier;
use crate::failures::ReaderProgress;

/// Pings the service manager every half `interval` while the failure
/// `reader` is idle or makes progress within `interval / 2`, and `probe` (a
/// kernel map read) returns in time.
pub fn spawn(
    notifier: Arc<Notifier>,
    interval: Duration,
    reader: Arc<ReaderProgress>,
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
            let stalled = reader.stalled_for();
            match maps {
                Ok(Ok(())) if stalled < period => notifier.watchdog(),
                Ok(Ok(())) => {
                    tracing::warn!(stalled = ?stalled, "failure reader is stuck: no watchdog ping");
                }
                _ => tracing::warn!("kernel maps did not answer in {period:?}: no watchdog ping"),
            }
        }
    })
}
