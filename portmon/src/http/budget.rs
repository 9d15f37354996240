//! A bound on the memory of answers waiting for their clients to read them.
//! A body shared by several connections (one snapshot's answer) counts once.
//! When a new answer would pass the bound, the connections that have held
//! theirs longest are closed: a client that reads slowly loses its answer,
//! and a scrape that reads at once is never refused for it.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// Bodies smaller than this are not counted: they fit in the socket's
/// buffers, so a slow reader does not hold them in the daemon.
const COUNTED: usize = 64 * 1024;

/// The bound, shared by every connection.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    bytes: usize,
    /// Body (by address) → its length and how many holds share it.
    bodies: HashMap<usize, (usize, usize)>,
    /// Holds, oldest first → their body and their connection's closer.
    holds: BTreeMap<u64, (usize, Arc<Notify>)>,
    next: u64,
}

impl Held {
    fn release(&mut self, hold: u64) -> Option<Arc<Notify>> {
        let (body, closer) = self.holds.remove(&hold)?;
        if let Some((len, sharers)) = self.bodies.get_mut(&body) {
            *sharers -= 1;
            if *sharers == 0 {
                self.bytes -= *len;
                self.bodies.remove(&body);
            }
        }
        Some(closer)
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::default(),
        })
    }

    /// `body` as a response body counted against the bound until it is
    /// sent or dropped; `closer` closes the connection that sends it.
    pub fn body(self: &Arc<Self>, body: Bytes, closer: &Arc<Notify>) -> BudgetedBody {
        if body.len() < COUNTED {
            return BudgetedBody {
                inner: Full::new(body),
                hold: None,
            };
        }
        let key = body.as_ptr() as usize;
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.bodies.contains_key(&key) {
            while held.bytes + body.len() > self.limit {
                let Some(oldest) = held.holds.keys().next().copied() else {
                    break;
                };
                if let Some(closer) = held.release(oldest) {
                    closer.notify_one();
                }
            }
            held.bytes += body.len();
        }
        held.bodies.entry(key).or_insert((body.len(), 0)).1 += 1;
        let id = held.next;
        held.next += 1;
        held.holds.insert(id, (key, closer.clone()));
        drop(held);
        BudgetedBody {
            inner: Full::new(body),
            hold: Some(Hold {
                budget: self.clone(),
                id,
            }),
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).bytes
    }
}

#[derive(Debug)]
struct Hold {
    budget: Arc<Budget>,
    id: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.id);
    }
}

/// A whole body whose memory counts against a [`Budget`] until hyper has
/// sent it (or the connection is gone) and drops it.
#[derive(Debug)]
pub struct BudgetedBody {
    inner: Full<Bytes>,
    hold: Option<Hold>,
}

impl Body for BudgetedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Sent: the kernel's buffers have it now.
            self.hold = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_bodies_count_once_and_the_oldest_holder_makes_room() {
        let budget = Budget::new(300 * 1024);
        let (a, b, c) = (
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        );
        let big = Bytes::from(vec![0u8; 200 * 1024]);
        let first = budget.body(big.clone(), &a);
        let shared = budget.body(big.clone(), &b);
        assert_eq!(budget.bytes(), 200 * 1024);
        // Another 200 KiB body passes the bound: both older holds are let go.
        let other = budget.body(Bytes::from(vec![1u8; 200 * 1024]), &c);
        assert_eq!(budget.bytes(), 200 * 1024);
        for closer in [&a, &b] {
            let closed = closer.notified();
            tokio::pin!(closed);
            assert!(
                closed.as_mut().enable(),
                "the older connections are told to close"
            );
        }
        drop((first, shared));
        assert_eq!(budget.bytes(), 200 * 1024);
        drop(other);
        assert_eq!(budget.bytes(), 0);
        // Small bodies are not counted.
        let _small = budget.body(Bytes::from_static(b"ok\n"), &a);
        assert_eq!(budget.bytes(), 0);
    }
}
