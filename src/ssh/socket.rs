//! A connection's TCP socket, acknowledging at once during the handshake.
//!
//! OpenSSH's client leaves Nagle's algorithm on until a session is
//! interactive, so it holds its key-exchange packet until the server has
//! acknowledged the `KEXINIT` before it. Linux delays that ACK by up to
//! 40 ms when the server had just written (its own `KEXINIT`: "ping-pong"
//! mode), which made about half of all connections 40 ms slower (seen
//! with `tcpdump -i lo`: the server's bare ACK 44 ms after the client's
//! `KEXINIT`, the client's next packet right behind it). `TCP_QUICKACK`
//! leaves that mode but does not stick, so it is set again after every
//! read and write of the first [`HANDSHAKE_OPS`]; bulk transfers after
//! that are left to the kernel.
//!
//! Also [`AuthDeadline`]: a connection's socket that fails every read and
//! write once the authentication deadline has passed while the client is
//! still unauthenticated, whatever phase the SSH session is in (russh runs
//! each session in a task of its own and times out only some phases).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads and writes that re-arm quick ACKs: a key exchange and public-key
/// authentication take about twenty.
const HANDSHAKE_OPS: u32 = 64;

/// A [`TcpStream`] that acknowledges at once for its first operations.
pub struct QuickAck {
    stream: TcpStream,
    left: u32,
}

impl QuickAck {
    pub fn new(stream: TcpStream) -> QuickAck {
        let mut s = QuickAck {
            stream,
            left: HANDSHAKE_OPS,
        };
        s.rearm();
        s
    }

    fn rearm(&mut self) {
        if self.left > 0 {
            self.left -= 1;
            // Only a latency hint: a failure changes nothing else.
            let _ = self.stream.set_quickack(true);
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.rearm();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.rearm();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.rearm();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A stream that stops working at a deadline unless `authed` is set by
/// then: every read and write after it fails with `TimedOut`, which ends
/// the russh session task and so drops the socket and the connection's
/// unauthenticated slot.
pub struct AuthDeadline<S> {
    inner: S,
    deadline: Pin<Box<tokio::time::Sleep>>,
    authed: Arc<AtomicBool>,
}

impl<S> AuthDeadline<S> {
    pub fn new(inner: S, deadline: tokio::time::Instant, authed: Arc<AtomicBool>) -> Self {
        AuthDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            authed,
        }
    }

    /// `Err` once the deadline has passed unauthenticated; otherwise arms
    /// a wake-up for the deadline (so a session blocked on a silent client
    /// is polled again then).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.authed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "ssh authentication deadline passed",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn passes_bytes_both_ways_and_stops_rearming() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for i in 0..100u8 {
                c.write_all(&[i]).await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
                assert_eq!(b[0], i.wrapping_add(1));
            }
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut s = QuickAck::new(socket);
        for _ in 0..100 {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&[b[0].wrapping_add(1)]).await.unwrap();
        }
        client.await.unwrap();
        assert_eq!(s.left, 0);
    }

    #[tokio::test]
    async fn deadline_fails_a_silent_read_unless_authenticated() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (s1, _) = listener.accept().await.unwrap();
        let at = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
        let mut s = AuthDeadline::new(s1, at, Arc::new(AtomicBool::new(false)));
        let mut b = [0u8; 1];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // Authenticated in time: the deadline no longer applies.
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        let (s2, _) = listener.accept().await.unwrap();
        let authed = Arc::new(AtomicBool::new(true));
        let mut s = AuthDeadline::new(s2, at, authed);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        c2.write_all(b"x").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        s.write_all(b"y").await.unwrap();
    }
}
