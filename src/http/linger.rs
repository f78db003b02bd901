//! Closing a connection without losing its last answer.
//!
//! Owns what happens to a TCP connection once hyper is done with it. The
//! client may still be sending a body nobody read (an over-long upload
//! answered `413`, sent whole before the client reads, as Python's
//! `urllib` does). Closing the socket with unread bytes makes the kernel
//! send a reset, and the client loses the answer. So, like nginx's
//! lingering close: shut our writing side (the client gets the answer and
//! end-of-stream), read and throw away what still comes for a bounded time
//! and amount, then close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Longest a closed connection is drained.
const LINGER_TIME: Duration = Duration::from_secs(30);
/// Longest wait for the next bytes while draining.
const LINGER_IDLE: Duration = Duration::from_secs(5);
/// Most bytes drained.
const LINGER_BYTES: usize = 1 << 30;

/// A TCP stream that lingers when dropped, keeping `held` (the
/// connection's place under the connection caps) until the drain ends:
/// a lingering socket still holds its descriptor.
pub struct Linger(Option<TcpStream>, Option<Box<dyn Send + Sync>>);

impl Linger {
    /// Wrap an accepted connection (the connection cap does, under TLS
    /// too: the raw bytes are drained).
    pub fn new(stream: TcpStream, held: impl Send + Sync + 'static) -> Linger {
        Linger(Some(stream), Some(Box::new(held)))
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some(stream) = self.0.take() else { return };
        let held = self.1.take();
        // Outside a runtime (shutting down) the socket just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                drain(stream).await;
                drop(held);
            });
        }
    }
}

/// Shut the writing side, then read and discard until the client closes
/// or a bound is reached.
async fn drain(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while total < LINGER_BYTES {
            match tokio::time::timeout(LINGER_IDLE, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    })
    .await;
}
