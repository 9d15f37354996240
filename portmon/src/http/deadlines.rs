//! Read and write deadlines on a connection: hyper has a timeout for a
//! request head only, so a client that stops reading a response (or sends
//! nothing between requests) would hold its task and buffers for ever.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{sleep, Instant, Sleep},
};

/// An I/O stream whose reads fail after `read` without a byte moving either
/// way, and whose writes fail after `write` without the client taking one.
#[derive(Debug)]
pub struct Deadlines<S> {
    inner: S,
    read: Duration,
    write: Duration,
    read_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadlines<S> {
    pub fn new(inner: S, read: Duration, write: Duration) -> Self {
        Self {
            inner,
            read,
            write,
            read_deadline: None,
            write_deadline: None,
        }
    }
}

/// Arms `deadline` `after` from now if unarmed; an error once it passed.
fn expired(deadline: &mut Option<Pin<Box<Sleep>>>, after: Duration, cx: &mut Context<'_>) -> bool {
    let timer = deadline.get_or_insert_with(|| Box::pin(sleep(after)));
    timer.as_mut().poll(cx).is_ready()
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("client too slow to {what}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                if expired(&mut this.read_deadline, this.read, cx) {
                    return Poll::Ready(Err(timed_out("send")));
                }
                Poll::Pending
            }
            ready => {
                this.read_deadline = None;
                ready
            }
        }
    }
}

impl<S> Deadlines<S> {
    /// A write's outcome, with the write deadline armed while it waits.
    fn after_write(
        &mut self,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Pending => {
                if expired(&mut self.write_deadline, self.write, cx) {
                    return Poll::Ready(Err(timed_out("read")));
                }
                Poll::Pending
            }
            Poll::Ready(result) => {
                self.write_deadline = None;
                // Bytes moving out are progress: a response that takes
                // longer than the read timeout to send is not an idle client.
                if let Some(read) = self.read_deadline.as_mut() {
                    read.as_mut().reset(Instant::now() + self.read);
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(written, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(written, cx)
    }

    /// Passed on: with vectored writes hyper sends a shared body from where
    /// it lies, instead of copying it into a buffer per connection.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                if expired(&mut this.write_deadline, this.write, cx) {
                    return Poll::Ready(Err(timed_out("read")));
                }
                Poll::Pending
            }
            Poll::Ready(result) => {
                this.write_deadline = None;
                Poll::Ready(result)
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_a_read() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = Deadlines::new(ours, Duration::from_secs(10), Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_times_out_a_write() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = Deadlines::new(ours, Duration::from_secs(10), Duration::from_secs(5));
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_reading_is_not_cut() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = Deadlines::new(ours, Duration::from_secs(10), Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
        });
        io.write_all(&[0u8; 1024])
            .await
            .expect("a slow but steady reader");
        reader.await.unwrap();
    }
}
