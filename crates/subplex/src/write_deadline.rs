//! A client connection's socket with a bound on how long one write may wait.
//!
//! hyper has no write timeout, and a client that stops reading leaves a write pending
//! forever once its TCP buffers are full: the connection, its streamed body (SSE,
//! multipart) or its upgraded WebSocket, and every task feeding them would wait with it.
//! Wrapped in [`WriteDeadline`], such a write fails with `TimedOut` after
//! `server.client_write_timeout_ms`, hyper tears the connection down, and the feeds see
//! their client gone. The timer is armed only while a write is pending, so a socket with
//! room costs nothing extra.
//!
//! A cut socket is reset, not closed: what sits unsent in its kernel buffer (up to
//! megabytes on a fast link) is stale by then, and a graceful close would keep it, and the
//! connection, alive until the slow client had read all of it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::state::DownstreamStats;

/// The error a stuck write ends with.
pub(crate) const STUCK_WRITE: &str =
    "a write to the client did not complete within server.client_write_timeout_ms";

/// A socket that can drop what it has not sent yet when it is closed.
pub(crate) trait DiscardUnsent {
    /// Makes the close that follows a reset that discards unsent data.
    fn discard_unsent_on_close(&self);
}

impl DiscardUnsent for tokio::net::TcpStream {
    fn discard_unsent_on_close(&self) {
        // `SO_LINGER` 0: the close sends RST at once, without blocking.
        if let Err(error) = self.set_zero_linger() {
            tracing::debug!(%error, "could not set SO_LINGER on a cut client socket");
        }
    }
}

/// `inner` whose writes fail once one has been pending for `timeout`.
#[derive(Debug)]
pub(crate) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Told once when a write times out.
    stats: Arc<DownstreamStats>,
    /// Set when a write first returned `Pending`, cleared when one completes.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S: DiscardUnsent> WriteDeadline<S> {
    pub(crate) fn new(inner: S, timeout: Duration, stats: Arc<DownstreamStats>) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stats,
            deadline: None,
        }
    }

    /// The socket, to peek at or query.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The socket, without the bound.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    /// What to return for a write attempt that came back `pending` or `ready`.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(reason = STUCK_WRITE, "client cut off");
                        self.stats.stuck_client_cut();
                        self.inner.discard_unsent_on_close();
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, STUCK_WRITE)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + DiscardUnsent + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + DiscardUnsent + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl DiscardUnsent for tokio::io::DuplexStream {
        fn discard_unsent_on_close(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_pending_past_the_timeout_fails_and_a_reader_resets_the_clock() {
        // A pipe that holds 16 bytes: the writer blocks until the reader reads.
        let (client, server) = tokio::io::duplex(16);
        let stats = Arc::new(DownstreamStats::default());
        let mut server = WriteDeadline::new(server, Duration::from_secs(10), stats.clone());
        let mut client = client;

        server.write_all(&[1; 16]).await.unwrap();
        // Blocked for 9 s, then the client reads: the write completes, no error.
        let write = tokio::spawn(async move { server.write_all(&[2; 16]).await.map(|()| server) });
        tokio::time::sleep(Duration::from_secs(9)).await;
        let mut buf = [0; 16];
        client.read_exact(&mut buf).await.unwrap();
        let mut server = write.await.unwrap().expect("completed before the deadline");

        // The clock starts again with the next pending write: 10 s of no reading fails it.
        let started = tokio::time::Instant::now();
        let err = server.write_all(&[3; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), STUCK_WRITE);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(stats.stuck_clients_cut(), 1);
    }
}
