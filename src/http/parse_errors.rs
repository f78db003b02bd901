//! The contract's JSON error for requests hyper refuses before the API
//! sees them (a malformed or duplicated header, too many headers, a path
//! over 64 KiB). Hyper answers those itself with an empty body; this
//! stream wrapper, between hyper and the connection, recognises such an
//! answer — a 4xx head without the `Draupnir-Version` header every
//! response of ours carries — and writes the contract's error in its place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ApiError;

/// An [`Accept`] wrapping another, giving hyper a [`ErrorBodies`] stream.
#[derive(Clone)]
pub struct WithErrorBodies<A> {
    inner: A,
    api_version: String,
}

impl<A> WithErrorBodies<A> {
    pub fn new(inner: A, api_version: &str) -> Self {
        WithErrorBodies {
            inner,
            api_version: api_version.to_string(),
        }
    }
}

impl<A, I, S> Accept<I, S> for WithErrorBodies<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = ErrorBodies<A::Stream>;
    type Service = A::Service;
    type Future = Pin<
        Box<dyn std::future::Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let inner = self.inner.accept(stream, service);
        let api_version = self.api_version.clone();
        Box::pin(async move {
            let (stream, service) = inner.await?;
            Ok((
                ErrorBodies {
                    inner: stream,
                    api_version,
                    pending: None,
                },
                service,
            ))
        })
    }
}

/// A connection whose hyper-made error answers get the contract's body.
pub struct ErrorBodies<S> {
    inner: S,
    api_version: String,
    /// A replacement being written, its progress, and how many bytes of
    /// the caller's buffer it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

/// The status of a head hyper wrote on its own, if `buf` is one: a whole
/// 4xx head with an empty body and no `Draupnir-Version`.
fn hyper_error_status(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 4")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 4"))?;
    if !buf.ends_with(b"\r\n\r\n") || buf.len() > 1024 {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    if head.contains("\r\ndraupnir-version:") || !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let code = std::str::from_utf8(rest.get(..2)?).ok()?;
    StatusCode::from_u16(400 + code.parse::<u16>().ok()?).ok()
}

impl<S> ErrorBodies<S> {
    fn replacement(&self, status: StatusCode) -> Vec<u8> {
        let body = ApiError::malformed_request(status).json_bytes();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ndraupnir-version: {}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.api_version,
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorBodies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match hyper_error_status(buf) {
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
                Some(status) => {
                    let bytes = self.replacement(status);
                    self.pending = Some((bytes, 0, buf.len()));
                }
            }
        }
        let this = &mut *self;
        let Some((bytes, done, stands_for)) = this.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *done < bytes.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *stands_for;
        this.pending = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hyper_own_error_heads() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                      date: Wed, 02 Dec 2026 01:00:00 GMT\r\n\r\n";
        assert_eq!(
            hyper_error_status(hyper),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\
                     draupnir-version: 5.3.6\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_error_status(ours), None);
        assert_eq!(
            hyper_error_status(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            hyper_error_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"),
            None
        );
    }
}
