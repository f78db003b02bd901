//! What a shell channel with a terminal (a bare `ssh draupnir` from a
//! terminal) needs from its output: the client's terminal is in raw mode,
//! so every `\n` goes out as `\r\n`, as a real pseudo-terminal's `ONLCR`
//! would send it. [`Crlf`] wraps a channel writer to do that. (Commands
//! keep their bytes: their output is often captured, `$(ssh -t …)`.)

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// A writer that sends each `\n` (not already after a `\r`) as `\r\n`.
/// Bytes it accepts are buffered until the inner writer takes them.
pub(crate) struct Crlf<W> {
    inner: W,
    pending: Vec<u8>,
    /// Where `pending` has been written up to.
    sent: usize,
    last: u8,
}

impl<W> Crlf<W> {
    pub(crate) fn new(inner: W) -> Self {
        Crlf {
            inner,
            pending: Vec::new(),
            sent: 0,
            last: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> Crlf<W> {
    /// Write out what is buffered.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Crlf<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.drain(cx))?;
        for &b in buf {
            if b == b'\n' && me.last != b'\r' {
                me.pending.push(b'\r');
            }
            me.pending.push(b);
            me.last = b;
        }
        // Accepted: what the inner writer does not take now goes out on
        // the next write or flush.
        if let Poll::Ready(Err(e)) = me.drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn newlines_become_crlf_once() {
        let mut w = Crlf::new(Vec::new());
        w.write_all(b"a\nb\r\nc\n").await.unwrap();
        w.write_all(b"\n").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.inner, b"a\r\nb\r\nc\r\n\r\n");
    }
}
