//! An honest watchdog: the ping goes out only while the parts that can
//! wedge still move — the async runtime (the ping runs on it), the task
//! that settles failures from the ring buffer (its progress), and the
//! daemon's liveness as `/healthz` tells it (programs attached, kernel maps
//! and inventory read lately, no read wedged), which is read without
//! waiting behind a scrape.

use std::{sync::Arc, time::Duration};

use super::notify::Notifier;
use crate::failures::ReaderProgress;

/// Pings the service manager every half `interval` while the failure
/// `reader` is idle or makes progress within `interval / 2`, and `liveness`
/// (which must not block) says all is well.
pub fn spawn<E: std::fmt::Display>(
    notifier: Arc<Notifier>,
    interval: Duration,
    reader: Arc<ReaderProgress>,
    liveness: impl Fn() -> Result<(), E> + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let period = interval / 2;
    tracing::info!(interval = ?interval, "watchdog on");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            let stalled = reader.stalled_for();
            match liveness() {
                Ok(()) if stalled < period => notifier.watchdog(),
                Ok(()) => {
                    tracing::warn!(stalled = ?stalled, "failure reader is stuck: no watchdog ping");
                }
                Err(why) => tracing::warn!("{why}: no watchdog ping"),
            }
        }
    })
}
