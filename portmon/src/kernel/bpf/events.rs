//! The ring buffer the kernel programs send failures on (`FAILURES`): the
//! only per-event traffic from the kernel, and a rare one. Its file
//! descriptor becomes readable when records wait, so the daemon waits on it
//! with `tokio::io::unix::AsyncFd`, as aya's own ring buffer tests do.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use portmon_common::FailureEvent;
use tokio::io::{unix::AsyncFd, Interest};

/// The failure events' ring buffer.
pub struct FailureEvents {
    ring: RingBuf<MapData>,
}

/// What one drain of the ring buffer found.
#[derive(Debug, Default)]
pub struct Drained {
    /// The events, oldest first.
    pub events: Vec<FailureEvent>,
    /// Records too short to be an event (a kernel/user version mismatch).
    pub undecodable: u64,
}

impl Drained {
    /// Whether the drain found nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.undecodable == 0
    }
}

impl std::fmt::Debug for FailureEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureEvents").finish_non_exhaustive()
    }
}

impl FailureEvents {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Takes every record waiting now.
    pub fn drain(&mut self) -> Drained {
        let mut drained = Drained::default();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(event) => drained.events.push(event),
                None => drained.undecodable += 1,
            }
        }
        drained
    }
}

/// The ring buffer, registered with the async runtime to wait on.
#[derive(Debug)]
pub struct AsyncFailureEvents {
    ring: AsyncFd<FailureEvents>,
}

impl AsyncFailureEvents {
    /// Registers `events` with the calling tokio runtime.
    pub fn new(events: FailureEvents) -> io::Result<Self> {
        // SAFETY: the descriptor is the ring buffer map's, owned by `events`
        // (its `MapData`), which the `AsyncFd` owns from here on: it stays
        // open and the same for as long as the registration.
        let ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(|err| err.into_parts().1)?;
        Ok(Self { ring })
    }

    /// Waits until records are there and takes them (possibly none, after
    /// a spurious wake-up).
    pub async fn next_batch(&mut self) -> io::Result<Drained> {
        let mut ready = self.ring.readable_mut().await?;
        let drained = ready.get_inner_mut().drain();
        // A record that lands after the drain sets the readiness again:
        // tokio clears it only if no wake-up came since `readable_mut`.
        ready.clear_ready();
        Ok(drained)
    }
}

impl AsRawFd for FailureEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// A ring buffer record as a `FailureEvent`, if it is one.
pub(crate) fn decode(bytes: &[u8]) -> Option<FailureEvent> {
    if bytes.len() < std::mem::size_of::<FailureEvent>() {
        return None;
    }
    // SAFETY: the length is checked; FailureEvent is plain old data (any bit
    // pattern is valid) and read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FailureEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_short_records() {
        assert!(decode(&[0u8; 10]).is_none());
        let event = decode(&[0u8; std::mem::size_of::<FailureEvent>()]);
        assert_eq!(event.map(|e| e.port), Some(0));
    }
}
